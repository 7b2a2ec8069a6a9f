/**
 * Resolves the METADATA argument of read commands: a metadata device or file,
 * or (with -m) a live thin-pool, named as ThinPool.open accepts (dm name,
 * VG/LV, /dev/mapper/NAME, /dev/VG/LV). For a pool, the held metadata
 * snapshot is used; if none is held, one is reserved for the duration of the
 * command and released afterwards (also on Ctrl-C / SIGTERM).
 */
import { statSync } from 'node:fs';
import { DmthinError, MetadataError, NameLookupError, SetupError, UsageError } from '../errors';
import type { ThinMetadata } from '../thin/metadata';
import type * as Metadata from '../thin/metadata';
import type { ThinPool as ThinPoolT } from '../pool/thin-pool';
import type * as PoolName from '../pool/pool-name';
import type * as BlockDevices from '../dm/block-devices';
import type * as Records from '../stream/format/records';
import { CliContext, parseIntArg } from './common';

export interface MetadataSnapOpts {
  metadataSnap?: boolean;
  metadataSnapBlock?: string;
  /** -m was not given: the command chose the snapshot because METADATA names no file (check of a pool name). */
  snapImplied?: boolean;
}

export function snapOption(o: MetadataSnapOpts): boolean | number | undefined {
  if (o.metadataSnapBlock !== undefined) {
    const b = parseIntArg('--metadata-snap block', o.metadataSnapBlock);
    // Block 0 is the superblock itself, never a snapshot (said here, not in the library's option name).
    if (b === 0) throw new UsageError("--metadata-snap block must be 1 or more (block 0 is the live superblock), got '0'");
    return b;
  }
  return o.metadataSnap ? true : undefined;
}

/** Loaded on use: the dm layer is not needed to read a file. */
function openPool(arg: string): Promise<ThinPoolT> {
  return (require('../pool/thin-pool') as { ThinPool: typeof ThinPoolT }).ThinPool.open(arg);
}

/**
 * Does METADATA name a live pool? A pool name that is no file here (dm name,
 * VG/LV, /dev/mapper/NAME, /dev/VG/LV), or the device node of a pool (or of
 * LVM's layer over one): a pool's own device never holds metadata.
 */
export async function namesPool(arg: string): Promise<boolean> {
  // The pool and dm modules are loaded only when needed: a regular file's
  // path (the common case) needs neither, and they cost start-up.
  let st;
  try {
    st = statSync(arg);
  } catch (e) {
    // Only a path that leads nowhere may be a pool's name; one that cannot be
    // followed (a symlink loop, no search permission) is a file its open reports.
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT' && (e as NodeJS.ErrnoException).code !== 'ENOTDIR') return false;
    st = undefined;
  }
  if (!st) return (require('../pool/pool-name') as typeof PoolName).poolNameShape(arg) !== undefined;
  if (!st.isBlockDevice() || !(await (require('../dm/block-devices') as typeof BlockDevices).isDmDevice(arg))) return false;
  return openPool(arg).then(
    () => true,
    () => false, // not a pool (e.g. LVM's _tmeta): read it as metadata
  );
}

export interface MetadataSource {
  metadata: ThinMetadata;
  /** The live pool it was read from (METADATA named one). */
  pool?: ThinPoolT;
}

export async function openMetadataSource(arg: string, o: MetadataSnapOpts, ctx: CliContext): Promise<MetadataSource> {
  const snap = snapOption(o);
  if (!(await namesPool(arg))) {
    // Loaded here, not at import: every command imports this file, and --help needs no reader.
    const { ThinMetadata } = require('../thin/metadata') as typeof Metadata;
    let md: ThinMetadata;
    try {
      md = await ThinMetadata.open(arg, { metadataSnap: snap });
    } catch (e) {
      throw streamHint(e, arg);
    }
    // Through the snapshot a pool holds (thin_dump -m /dev/vg/pool_tmeta): it too may be
    // released while read, then the device's held root and copy say so (ESTALE).
    if (snap !== undefined) ctx.onInputCheck({ verify: () => md.verifySnapshot() });
    return { metadata: md };
  }
  if (snap === undefined) {
    throw new DmthinError('ENOENT', `${arg}: no such file (a live pool can be read by name only through its metadata snapshot, -m)`, { path: arg });
  }
  let pool: ThinPoolT;
  try {
    pool = await openPool(arg);
  } catch (e) {
    // A name that is neither a file nor a pool (none found, or no device-mapper to ask): say both,
    // a mistyped file name included.
    const found = e instanceof NameLookupError && e.reason !== 'not-found';
    // Without device-mapper, a name given without -m is most likely a mistyped file
    // name: how to load device-mapper is no help there. With -m it is kept (the fix).
    if (e instanceof SetupError && e.kind === 'no-device-mapper' && o.snapImplied === true) {
      throw new DmthinError('ENOENT', `${arg}: no such file or directory (nor a pool: device-mapper is not available on this machine)`, { path: arg });
    }
    if (e instanceof DmthinError && !found) e.message = `${arg}: no such file, and ${e.message}`;
    throw e;
  }
  // Someone else's snapshot is used and left held; otherwise one is reserved until the command ends.
  const live = await pool.openMetadata({ snapshot: 'held-or-reserve', root: typeof snap === 'number' ? snap : undefined });
  ctx.onCleanup(() => live.release());
  // Released by something else while read (a held snapshot anyone may release): ESTALE, not what was read.
  ctx.onInputCheck(live);
  return { metadata: live.metadata, pool };
}

/**
 * A send stream given where metadata belongs (`dump backup.stream`) fails
 * the superblock's checksum: say what the file is and what reads it.
 */
function streamHint(e: unknown, path: string): unknown {
  if (!(e instanceof MetadataError) || e.block !== 0) return e;
  const { looksLikeStream } = require('../stream/format/records') as typeof Records;
  const { readFileHead } = require('../thin/metadata') as typeof Metadata;
  if (looksLikeStream(readFileHead(path, 64))) e.message = `${path} is a dmthin send stream, not pool metadata (${e.message.replace(`${path}: `, '')}): 'dmthin receive' reads it`;
  return e;
}

export async function openMetadata(arg: string, o: MetadataSnapOpts, ctx: CliContext): Promise<ThinMetadata> {
  return (await openMetadataSource(arg, o, ctx)).metadata;
}

/**
 * What `ls` and `delta` check besides the trees they read when METADATA is
 * read through its live superblock (not -m): the metadata space map's index
 * block, as opening the space map checks it. thin_ls and thin_delta 0.9.0
 * open the space maps then and refuse metadata whose index block is damaged
 * (so does the kernel when it opens the pool); through a metadata snapshot
 * they do not, nor do thin_dump and thin_rmap, nor dmthin's.
 */
export async function checkMetadataSpaceMapIndex(md: ThinMetadata, o: MetadataSnapOpts): Promise<void> {
  if (snapOption(o) === undefined) await md.spaceMap('metadata').metadataIndexBlock();
}

/** A thin id on the command line: 0..2^24-1, checked before anything is opened. */
export function isThinIdText(v: string): boolean {
  return /^[0-9]+$/.test(v);
}

/**
 * A thin id given as a number or, for a live LVM pool, as an LV name
 * (VG/LV or LV in the pool's VG, looked up with lvs). `max`: the kernel's
 * 24 bits unless the command only reads metadata, which thin_restore can
 * fill with larger ids.
 */
export async function thinIdArg(flag: string, v: string, pool: ThinPoolT | undefined, max = 2 ** 24 - 1): Promise<number> {
  if (isThinIdText(v)) return parseIntArg(flag, v, max);
  if (!pool?.lvm) {
    throw new UsageError(`${flag} must be a thin id (${max === 2 ** 24 - 1 ? '0..16777215' : 'decimal digits'})${pool ? '' : ' or, with a live LVM pool, an LV name'}, got '${v}'${pool ? ` (pool ${pool.name} is not LVM's, so it has no LV names)` : ''}`);
  }
  return pool.thinId(v);
}
