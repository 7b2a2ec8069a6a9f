/**
 * Resolves the METADATA argument of read commands: a metadata device or file,
 * or (with -m) the dm name of a live thin-pool. For a pool, the held metadata
 * snapshot is used; if none is held, one is reserved for the duration of the
 * command and released afterwards (also on Ctrl-C / SIGTERM).
 */
import { existsSync } from 'node:fs';
import { DmthinError } from '../errors';
import { ThinMetadata } from '../thin/metadata';
import type { ThinPool as ThinPoolT } from '../pool/thin-pool';
import { CliContext, parseIntArg } from './common';

export interface MetadataSnapOpts {
  metadataSnap?: boolean;
  metadataSnapBlock?: string;
}

export function snapOption(o: MetadataSnapOpts): boolean | number | undefined {
  if (o.metadataSnapBlock !== undefined) return parseIntArg('--metadata-snap block', o.metadataSnapBlock);
  return o.metadataSnap ? true : undefined;
}

/** A dm name (no slash) that is not a file here. */
export function looksLikePool(arg: string): boolean {
  return !arg.includes('/') && !existsSync(arg);
}

export async function openMetadata(arg: string, o: MetadataSnapOpts, ctx: CliContext): Promise<ThinMetadata> {
  const snap = snapOption(o);
  if (!looksLikePool(arg)) return ThinMetadata.open(arg, { metadataSnap: snap });
  if (snap === undefined) {
    throw new DmthinError('ENOENT', `${arg}: no such file (a live pool can be read by name only through its metadata snapshot, -m)`, { path: arg });
  }
  const { ThinPool } = require('../pool/thin-pool') as { ThinPool: typeof ThinPoolT };
  const pool = await ThinPool.open(arg);
  // Someone else's snapshot is used and left held; otherwise one is reserved until the command ends.
  const live = await pool.openMetadata({ snapshot: 'held-or-reserve', root: typeof snap === 'number' ? snap : undefined });
  ctx.onCleanup(() => live.release());
  return live.metadata;
}
