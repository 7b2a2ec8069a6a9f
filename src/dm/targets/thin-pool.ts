/**
 * The thin-pool target: table line builder and parser, status parser, and
 * the six pool messages (DM_TARGET_MSG to the pool device, sector 0).
 */
import { check, UsageError } from '../../errors';
import { type DataBlocks, type MetaBlocks, type Sectors, dataBlocks, metaBlocks, sectors } from '../../units';
import type { DmTarget } from '../ioctl';
import { type DeviceArg, U64_MAX, decimalArg, deviceArg, parseFail, parseSafe, parseU64, tokens } from './args';

/** The thin-pool target type name. */
export const THIN_POOL_TARGET = 'thin-pool';

/** data_block_size bounds in sectors (64 KiB .. 1 GiB, multiple of 64 KiB). */
export const MIN_DATA_BLOCK_SIZE = 128;
/** Largest data_block_size in sectors (1 GiB). */
export const MAX_DATA_BLOCK_SIZE = 2097152;
/** data_block_size must be a multiple of this many sectors (64 KiB). */
export const DATA_BLOCK_SIZE_MULTIPLE = 128;
/** The kernel reads at most this many feature arguments. */
export const MAX_POOL_FEATURES = 4;
/** Thin device ids are 24-bit. */
export const MAX_THIN_ID = (1 << 24) - 1;

/** The feature arguments a thin-pool table line may carry. */
export const THIN_POOL_FEATURES = ['skip_block_zeroing', 'ignore_discard', 'no_discard_passdown', 'read_only', 'error_if_no_space'] as const;
/** One of THIN_POOL_FEATURES. */
export type ThinPoolFeature = (typeof THIN_POOL_FEATURES)[number];

/** What a thin-pool table line is built from. */
export interface ThinPoolTableArgs {
  /** The metadata device. */
  metadataDev: DeviceArg;
  /** The data device. */
  dataDev: DeviceArg;
  /** Data block size in sectors (128 .. 2097152, a multiple of 128). */
  dataBlockSize: Sectors;
  /** Free data blocks below which the pool raises a dm event. */
  lowWaterMark: DataBlocks;
  /** At most 4. `read_only` is refused on a pool's first load (kernel rule). */
  features?: readonly ThinPoolFeature[];
}

/** A parsed thin-pool table line (devices as the kernel prints them: 'maj:min'). */
export interface ThinPoolTable {
  /** The metadata device, `major:minor`. */
  metadataDev: string;
  /** The data device, `major:minor`. */
  dataDev: string;
  /** Data block size in sectors. */
  dataBlockSize: Sectors;
  /** The low-water mark in data blocks. */
  lowWaterMark: DataBlocks;
  /** The known feature words, in table order. */
  features: ThinPoolFeature[];
  /** Feature words this code does not know, and tokens after the feature group. */
  extra: string[];
}

/** `<metadata_dev> <data_dev> <data_block_size> <low_water_mark> [<#features> <feature>...]` */
export function thinPoolParams(a: ThinPoolTableArgs): string {
  check.required(a, 'thinPoolTarget');
  const meta = deviceArg(a.metadataDev, 'metadata device');
  const data = deviceArg(a.dataDev, 'data device');
  if (meta === data) throw new UsageError(`metadata and data must be different devices (both ${meta})`);
  const bs = a.dataBlockSize;
  if (!Number.isInteger(bs) || bs < MIN_DATA_BLOCK_SIZE || bs > MAX_DATA_BLOCK_SIZE || bs % DATA_BLOCK_SIZE_MULTIPLE !== 0)
    throw new UsageError(
      `data block size must be a multiple of ${DATA_BLOCK_SIZE_MULTIPLE} sectors between ${MIN_DATA_BLOCK_SIZE} and ${MAX_DATA_BLOCK_SIZE} (got ${bs})`,
    );
  const lwm = decimalArg(a.lowWaterMark, 'low water mark', U64_MAX);
  const features = a.features ?? [];
  if (features.length > MAX_POOL_FEATURES) throw new UsageError(`at most ${MAX_POOL_FEATURES} pool features (got ${features.length})`);
  const seen = new Set<string>();
  for (const f of features) {
    if (!(THIN_POOL_FEATURES as readonly string[]).includes(f)) throw new UsageError(`unknown thin-pool feature ${JSON.stringify(f)}`);
    if (seen.has(f)) throw new UsageError(`thin-pool feature ${f} given twice`);
    seen.add(f);
  }
  const parts = [meta, data, String(bs), lwm];
  if (features.length) parts.push(String(features.length), ...features);
  return parts.join(' ');
}

/** The pool's one target: it must cover the whole device. */
export function thinPoolTarget(length: Sectors, a: ThinPoolTableArgs): DmTarget {
  check.integer(length, 'length'); // the kernel refuses a target of no sectors
  return { start: sectors(0), length, type: THIN_POOL_TARGET, params: thinPoolParams(a) };
}

/**
 * Parses a table line: one we built, or the kernel's table status
 * (`maj:min maj:min bs lwm count features...`, always with a count and with
 * trailing spaces). Feature words are matched case-insensitively, as the
 * kernel does.
 */
export function parseThinPoolTable(params: string): ThinPoolTable {
  const t = tokens(params);
  if (t.length < 4) throw parseFail('thin-pool table needs at least 4 fields', params);
  const dataBlockSize = parseSafe(t[2], 'data block size', params);
  const lowWaterMark = parseSafe(t[3], 'low water mark', params);
  const features: ThinPoolFeature[] = [];
  const extra: string[] = [];
  let i = 4;
  if (t.length > 4) {
    const count = parseSafe(t[4], 'feature count', params);
    if (5 + count > t.length) throw parseFail(`feature count ${count} but ${t.length - 5} features`, params);
    for (const w of t.slice(5, 5 + count)) {
      const f = w.toLowerCase();
      if ((THIN_POOL_FEATURES as readonly string[]).includes(f)) features.push(f as ThinPoolFeature);
      else extra.push(w);
    }
    i = 5 + count;
  }
  extra.push(...t.slice(i));
  return { metadataDev: t[0], dataDev: t[1], dataBlockSize: sectors(dataBlockSize), lowWaterMark: dataBlocks(lowWaterMark), features, extra };
}

// ------------------------------------------------------------------ status

/** A working pool's mode: read-write, read-only (also out of metadata space), out of data space. */
export type PoolMode = 'rw' | 'ro' | 'out_of_data_space';
/** How the pool handles discards. */
export type PoolDiscard = 'discard_passdown' | 'no_discard_passdown' | 'ignore_discard';
/** What the pool does with writes when out of data space: queue them or fail them. */
export type NoSpacePolicy = 'queue' | 'error';

/**
 * A working pool's INFO status. Fields after the held root appeared over
 * kernel versions (3.11 mode and discard, ~3.14 no-space policy, 3.15
 * needs_check, ~4.19 low watermark); they are undefined when the kernel did
 * not print them. `ro` also covers out-of-metadata-space.
 */
export interface ThinPoolStatusWorking {
  /** A working pool (not `fail` or `error`). */
  kind: 'working';
  /** The pool's transaction id. */
  transactionId: bigint;
  /** Includes the metadata reserve the kernel holds back. */
  usedMetadata: MetaBlocks;
  /** Size of the metadata device in metadata blocks. */
  totalMetadata: MetaBlocks;
  /** Data blocks in use. */
  usedData: DataBlocks;
  /** Size of the data device in data blocks. */
  totalData: DataBlocks;
  /** Root of the held metadata snapshot, or null. */
  heldMetadataRoot: MetaBlocks | null;
  /** rw, ro or out_of_data_space. */
  mode?: PoolMode;
  /** How discards are handled. */
  discard?: PoolDiscard;
  /** queue or error when out of data space. */
  noSpacePolicy?: NoSpacePolicy;
  /** The metadata is flagged for thin_check. */
  needsCheck?: boolean;
  /** Free metadata blocks below which the pool raises a dm event. */
  metadataLowWatermark?: MetaBlocks;
  /** Tokens after the known fields (vendor kernels, newer kernels). */
  extra: string[];
}

/** A pool's INFO status: working, failed (`Fail`), or a failed metadata query (`Error`). */
export type ThinPoolStatus =
  | ThinPoolStatusWorking
  | {
      /** The pool failed (`Fail`). */
      kind: 'fail';
    }
  | {
      /** A metadata query failed (`Error`). */
      kind: 'error';
    };

const MODES: readonly string[] = ['rw', 'ro', 'out_of_data_space'];
const DISCARDS: readonly string[] = ['discard_passdown', 'no_discard_passdown', 'ignore_discard'];

/**
 * `<transaction_id> <used_meta>/<total_meta> <used_data>/<total_data>
 * <held_root|-> [<mode> [<discard> [<no_space> [<needs_check|-> [<lwm>]]]]] ...`,
 * or `Fail` / `Error`.
 */
export function parseThinPoolStatus(line: string): ThinPoolStatus {
  const t = tokens(line);
  if (t.length === 1 && t[0] === 'Fail') return { kind: 'fail' };
  if (t.length === 1 && t[0] === 'Error') return { kind: 'error' };
  if (t.length < 4) throw parseFail('thin-pool status needs at least 4 fields', line);
  const [usedMeta, totalMeta] = ratio(t[1], 'metadata usage', line);
  const [usedData, totalData] = ratio(t[2], 'data usage', line);
  const s: ThinPoolStatusWorking = {
    kind: 'working',
    transactionId: parseU64(t[0], 'transaction id', line),
    usedMetadata: metaBlocks(usedMeta),
    totalMetadata: metaBlocks(totalMeta),
    usedData: dataBlocks(usedData),
    totalData: dataBlocks(totalData),
    heldMetadataRoot: t[3] === '-' ? null : metaBlocks(parseSafe(t[3], 'held metadata root', line)),
    extra: [],
  };
  if (t.length > 4) s.mode = oneOf(t[4], MODES, 'pool mode', line) as PoolMode;
  if (t.length > 5) s.discard = oneOf(t[5], DISCARDS, 'discard mode', line) as PoolDiscard;
  if (t.length > 6) {
    const p = oneOf(t[6], ['queue_if_no_space', 'error_if_no_space'], 'no-space policy', line);
    s.noSpacePolicy = p === 'queue_if_no_space' ? 'queue' : 'error';
  }
  if (t.length > 7) s.needsCheck = oneOf(t[7], ['needs_check', '-'], 'needs_check field', line) === 'needs_check';
  if (t.length > 8) s.metadataLowWatermark = metaBlocks(parseSafe(t[8], 'metadata low watermark', line));
  s.extra = t.slice(9);
  return s;
}

function ratio(tok: string, what: string, line: string): [number, number] {
  const m = /^([^/]+)\/([^/]+)$/.exec(tok);
  if (!m) throw parseFail(`bad ${what} ${JSON.stringify(tok)}`, line);
  return [parseSafe(m[1], what, line), parseSafe(m[2], what, line)];
}

function oneOf(tok: string, allowed: readonly string[], what: string, line: string): string {
  if (!allowed.includes(tok)) throw parseFail(`unexpected ${what} ${JSON.stringify(tok)}`, line);
  return tok;
}

// ------------------------------------------------------------------ messages

/** A thin device id: 0 .. 2^24-1. */
export type ThinId = number | bigint | string;

const thinId = (v: ThinId, what: string): string => decimalArg(v, what, BigInt(MAX_THIN_ID));

/**
 * The pool messages. Each validates its arguments before anything is sent,
 * so a bad value can never turn into a second argument or message: only
 * canonical decimal integers go into the text. Send with
 * `dm.targetMessage(pool, sectors(0), text)`.
 */
export const PoolMessage = {
  /** EEXIST if the id exists. */
  createThin: (id: ThinId): string => `create_thin ${thinId(id, 'thin id')}`,
  /** Suspend an active origin first (the kernel does not enforce it). ENODATA if the origin is missing. */
  createSnap: (id: ThinId, origin: ThinId): string => `create_snap ${thinId(id, 'snapshot id')} ${thinId(origin, 'origin id')}`,
  /** ENODATA if missing; EBUSY if the thin device is active. */
  delete: (id: ThinId): string => `delete ${thinId(id, 'thin id')}`,
  /** Compare-and-swap: EINVAL unless `current` is the pool's transaction id. */
  setTransactionId: (current: bigint | number | string, next: bigint | number | string): string =>
    `set_transaction_id ${decimalArg(current, 'current transaction id', U64_MAX)} ${decimalArg(next, 'new transaction id', U64_MAX)}`,
  /** EBUSY if a metadata snapshot is already held. */
  reserveMetadataSnap: (): string => 'reserve_metadata_snap',
  /** EINVAL if none is held. */
  releaseMetadataSnap: (): string => 'release_metadata_snap',
} as const;

/** The name of a pool message (its first word). */
export type PoolMessageName = 'create_thin' | 'create_snap' | 'delete' | 'set_transaction_id' | 'reserve_metadata_snap' | 'release_metadata_snap';

const ARITY: Record<PoolMessageName, { args: number; max: bigint }> = {
  create_thin: { args: 1, max: BigInt(MAX_THIN_ID) },
  create_snap: { args: 2, max: BigInt(MAX_THIN_ID) },
  delete: { args: 1, max: BigInt(MAX_THIN_ID) },
  set_transaction_id: { args: 2, max: U64_MAX },
  reserve_metadata_snap: { args: 0, max: 0n },
  release_metadata_snap: { args: 0, max: 0n },
};

/**
 * Reads a pool message in the strict form PoolMessage writes (single spaces,
 * canonical decimals). For logs, audits and tests; throws UsageError on
 * anything else.
 */
export function parsePoolMessage(text: string): {
  /** The message name. */
  name: PoolMessageName;
  /** Its arguments. */
  args: bigint[];
} {
  check.string(text, 'text');
  const words = text.split(' ');
  const name = words[0] as PoolMessageName;
  const spec = Object.prototype.hasOwnProperty.call(ARITY, name) ? ARITY[name] : undefined;
  if (!spec) throw new UsageError(`not a pool message: ${JSON.stringify(text)}`);
  if (words.length !== 1 + spec.args) throw new UsageError(`${name} takes ${spec.args} argument(s): ${JSON.stringify(text)}`);
  const args = words.slice(1).map((w) => {
    if (!/^(0|[1-9][0-9]*)$/.test(w)) throw new UsageError(`not a canonical decimal: ${JSON.stringify(w)}`);
    const n = BigInt(w);
    if (n > spec.max) throw new UsageError(`${name} argument ${n} exceeds ${spec.max}`);
    return n;
  });
  return { name, args };
}
