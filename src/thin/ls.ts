/**
 * ls: per-device usage, computed and printed as thin_ls 0.9.0 does.
 * EXCLUSIVE counts a device's mappings whose data block is mapped exactly once
 * in the whole pool; SHARED is the details tree's mapped_blocks minus that. The on-disk data space map is not
 * used: its counts are per leaf node, not per device.
 */
import { throwIfAborted, UsageError } from '../errors';
import { OwnerMap } from '../pdata/owner-map';
import type { ThinMetadata } from './metadata';

/** One device's usage, as thin_ls reports it. */
export interface DeviceUsage {
  /** The thin device id. */
  devId: number;
  /** From the details tree (as thin_ls 0.9.0 reports it). */
  mappedBlocks: number;
  /** Mappings whose data block no other mapping uses; null when not computed (`exclusive: false`). */
  exclusiveBlocks: number | null;
  /** mappedBlocks - exclusiveBlocks; null when not computed. (The walk checks mappedBlocks against the tree, so it is never negative.) */
  sharedBlocks: number | null;
  /** Pool transaction id when the device was created. */
  transactionId: bigint;
  /** Superblock time at creation. */
  creationTime: number;
  /** Time of the last snapshot of (or, for a snapshot, creating) this device. */
  snapshottedTime: number;
}

/** Options of deviceUsage. */
export interface UsageOptions {
  /**
   * Compute EXCLUSIVE/SHARED (default true): one walk of every mapping tree.
   * Without it only the details and top-level trees are read, as thin_ls
   * does for fields that do not need the mappings.
   */
  exclusive?: boolean;
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Mappings walked so far, out of the sum of mapped_blocks. */
  onProgress?: (p: { mappings: number; total: number }) => void;
}

/**
 * Usage of every device, in id order. One pass over every mapping tree:
 * each data block remembers the one device that maps it, or that several
 * mappings do; the same answer thin_ls gets from two passes.
 */
export async function deviceUsage(md: ThinMetadata, opts: UsageOptions = {}): Promise<DeviceUsage[]> {
  const devices = [...(await md.checkedDevices(opts)).values()].sort((a, b) => a.devId - b.devId);
  if (opts.exclusive === false) {
    return devices.map((d) => ({
      devId: d.devId,
      mappedBlocks: d.mappedBlocks,
      exclusiveBlocks: null,
      sharedBlocks: null,
      transactionId: d.transactionId,
      creationTime: d.creationTime,
      snapshottedTime: d.snapshottedTime,
    }));
  }
  const owners = new OwnerMap(devices.length);
  const total = devices.reduce((n, d) => n + d.mappedBlocks, 0);
  let walked = 0;
  for (let k = 0; k < devices.length; k++) {
    throwIfAborted(opts.signal);
    for await (const batch of md.mappingBatches(devices[k].devId, { signal: opts.signal })) {
      let n = 0;
      for (let r = 0; r < batch.count; r++) {
        const l = batch.length[r];
        owners.markRange(batch.dataBegin[r], l, k);
        n += l;
      }
      walked += n;
      opts.onProgress?.({ mappings: walked, total });
    }
  }
  const excl = owners.exclusiveCounts(devices.length);
  return devices.map((d, k) => ({
    devId: d.devId,
    mappedBlocks: d.mappedBlocks,
    exclusiveBlocks: excl[k],
    sharedBlocks: d.mappedBlocks - excl[k],
    transactionId: d.transactionId,
    creationTime: d.creationTime,
    snapshottedTime: d.snapshottedTime,
  }));
}

export const LS_FIELDS = [
  'DEV',
  'MAPPED_BLOCKS',
  'EXCLUSIVE_BLOCKS',
  'SHARED_BLOCKS',
  'MAPPED_SECTORS',
  'EXCLUSIVE_SECTORS',
  'SHARED_SECTORS',
  'MAPPED_BYTES',
  'EXCLUSIVE_BYTES',
  'SHARED_BYTES',
  'MAPPED',
  'EXCLUSIVE',
  'SHARED',
  'TRANSACTION',
  'CREATE_TIME',
  'SNAP_TIME',
] as const;
export type LsField = (typeof LS_FIELDS)[number];
export const DEFAULT_LS_FIELDS: readonly LsField[] = ['DEV', 'MAPPED', 'CREATE_TIME', 'SNAP_TIME'];

/** Parses a thin_ls field list ("DEV,MAPPED"); a trailing comma is allowed, as thin_ls allows it. */
export function parseLsFields(spec: string): LsField[] {
  if (spec === '') return [];
  const parts = spec.split(',');
  if (parts[parts.length - 1] === '') parts.pop();
  return parts.map((p) => {
    if (!(LS_FIELDS as readonly string[]).includes(p)) throw new UsageError(`unknown field '${p}' (fields: ${LS_FIELDS.join(', ')})`);
    return p as LsField;
  });
}

const U64 = (n: bigint) => BigInt.asUintN(64, n);
const UNITS = ['', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

/**
 * thin_ls's human units: divide by 1024 (truncating) while above 1 MiB, then,
 * if still above 8 KiB, round to the next unit. So 2 MiB prints as "2048KiB",
 * 768 KiB as "768KiB" and 4 KiB as "4096".
 */
export function formatDiskUnit(bytes: bigint): string {
  let n = U64(bytes);
  let i = 0;
  while (n > 1048576n) {
    n /= 1024n;
    i++;
  }
  if (n > 8192n) {
    // round(n / 1024.0), half away from zero; n < 2^20 here, so this is exact.
    n = BigInt(Math.round(Number(n) / 1024));
    i++;
  }
  return `${n}${UNITS[i]}`;
}

/** Whether a field needs the mapping walk (EXCLUSIVE/SHARED and their variants). */
export function needsMappings(f: LsField): boolean {
  return f.startsWith('EXCLUSIVE') || f.startsWith('SHARED');
}

/** The field's value as a non-negative integer, `null` when it was not computed. */
function fieldCount(u: DeviceUsage, f: 'MAPPED' | 'EXCLUSIVE' | 'SHARED'): number {
  const v = f === 'MAPPED' ? u.mappedBlocks : f === 'EXCLUSIVE' ? u.exclusiveBlocks : u.sharedBlocks;
  if (v === null) throw new UsageError(`field ${f} needs the mapping walk: call deviceUsage without exclusive: false`);
  return v;
}

const kindOf = (f: LsField): 'MAPPED' | 'EXCLUSIVE' | 'SHARED' => f.split('_')[0] as 'MAPPED';

/** One table cell, as thin_ls 0.9.0 prints it (sizes as u64s: they wrap as thin_ls's do). */
function fieldText(u: DeviceUsage, f: LsField, dataBlockSize: number): string {
  const bs = BigInt(dataBlockSize);
  switch (f) {
    case 'DEV':
      return String(u.devId);
    case 'MAPPED_BLOCKS':
    case 'EXCLUSIVE_BLOCKS':
    case 'SHARED_BLOCKS':
      return String(fieldCount(u, kindOf(f)));
    case 'MAPPED_SECTORS':
    case 'EXCLUSIVE_SECTORS':
    case 'SHARED_SECTORS':
      return String(U64(BigInt(fieldCount(u, kindOf(f))) * bs));
    case 'MAPPED_BYTES':
    case 'EXCLUSIVE_BYTES':
    case 'SHARED_BYTES':
      return String(U64(U64(BigInt(fieldCount(u, kindOf(f))) * bs) * 512n));
    case 'MAPPED':
    case 'EXCLUSIVE':
    case 'SHARED':
      return formatDiskUnit(U64(BigInt(fieldCount(u, f)) * bs) * 512n);
    case 'TRANSACTION':
      return String(u.transactionId);
    case 'CREATE_TIME':
      return String(u.creationTime);
    case 'SNAP_TIME':
      return String(u.snapshottedTime);
  }
}

/**
 * The JSON key of each field (camelCase, the DeviceUsage names; docs/json.md).
 * The human-unit fields MAPPED, EXCLUSIVE and SHARED are bytes in JSON.
 */
export const LS_JSON_KEYS: Readonly<Record<LsField, string>> = {
  DEV: 'devId',
  MAPPED_BLOCKS: 'mappedBlocks',
  EXCLUSIVE_BLOCKS: 'exclusiveBlocks',
  SHARED_BLOCKS: 'sharedBlocks',
  MAPPED_SECTORS: 'mappedSectors',
  EXCLUSIVE_SECTORS: 'exclusiveSectors',
  SHARED_SECTORS: 'sharedSectors',
  MAPPED_BYTES: 'mappedBytes',
  EXCLUSIVE_BYTES: 'exclusiveBytes',
  SHARED_BYTES: 'sharedBytes',
  MAPPED: 'mappedBytes',
  EXCLUSIVE: 'exclusiveBytes',
  SHARED: 'sharedBytes',
  TRANSACTION: 'transactionId',
  CREATE_TIME: 'creationTime',
  SNAP_TIME: 'snapshottedTime',
};

/**
 * One field's JSON value (docs/json.md): block counts, ids and times are
 * numbers; sectors, bytes (exact, not wrapped at 2^64 as the table's are)
 * and the transaction id are decimal strings.
 */
function fieldJson(u: DeviceUsage, f: LsField, dataBlockSize: number): number | string {
  switch (f) {
    case 'DEV':
      return u.devId;
    case 'MAPPED_BLOCKS':
    case 'EXCLUSIVE_BLOCKS':
    case 'SHARED_BLOCKS':
      return fieldCount(u, kindOf(f));
    case 'MAPPED_SECTORS':
    case 'EXCLUSIVE_SECTORS':
    case 'SHARED_SECTORS':
      return String(BigInt(fieldCount(u, kindOf(f))) * BigInt(dataBlockSize));
    case 'MAPPED_BYTES':
    case 'EXCLUSIVE_BYTES':
    case 'SHARED_BYTES':
    case 'MAPPED':
    case 'EXCLUSIVE':
    case 'SHARED':
      return String(BigInt(fieldCount(u, kindOf(f))) * BigInt(dataBlockSize) * 512n);
    case 'TRANSACTION':
      return String(u.transactionId);
    case 'CREATE_TIME':
      return u.creationTime;
    case 'SNAP_TIME':
      return u.snapshottedTime;
  }
}

/** thin_ls's table: every column right-aligned to its widest cell, each cell followed by a space. */
export function formatLsTable(rows: DeviceUsage[], fields: readonly LsField[], dataBlockSize: number, headers = true): string {
  if (fields.length === 0) return '';
  const grid: string[][] = [];
  if (headers) grid.push([...fields]);
  for (const u of rows) grid.push(fields.map((f) => fieldText(u, f, dataBlockSize)));
  const widths = fields.map((_, i) => Math.max(...grid.map((r) => r[i].length)));
  return grid.map((r) => r.map((c, i) => c.padStart(widths[i]) + ' ').join('') + '\n').join('');
}

/** Rows as JSON objects keyed by LS_JSON_KEYS, typed as docs/json.md says (u64s as decimal strings). */
export function lsJson(rows: DeviceUsage[], fields: readonly LsField[], dataBlockSize: number): Record<string, number | string>[] {
  return rows.map((u) => {
    const o: Record<string, number | string> = {};
    for (const f of fields) o[LS_JSON_KEYS[f]] = fieldJson(u, f, dataBlockSize);
    return o;
  });
}
