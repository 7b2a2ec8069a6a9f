/**
 * ls: per-device usage, computed and printed as thin_ls 0.9.0 does.
 * EXCLUSIVE counts a device's mappings whose data block is mapped exactly once
 * in the whole pool; SHARED is the details tree's mapped_blocks minus that. The on-disk data space map is not
 * used: its counts are per leaf node, not per device.
 */
import { check, UsageError } from '../errors';
import { transactionIdAt, type DetailsTable, type DeviceTable } from './device-table';
import { ByteOwnerMap, NibbleOwnerMap, OwnerMap, UseCounts } from '../pdata/owner-map';
import { TWO32 } from '../pdata/words';
import { decimalCellsFunction, diskUnitsFunction, hugeArrayBufferFunction } from '../native/binding';
import { OUTPUT_CHUNK_BYTES, OutputSink, type SinkTarget } from '../output/sink';
import { ThinMetadata } from './metadata';
import type { LsField } from './ls-fields';

export { DEFAULT_LS_FIELDS, LS_FIELDS, needsMappings, parseLsFields, type LsField } from './ls-fields';

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
   * Without it only the details tree is read, as thin_ls 0.9.0 reads for
   * fields that do not need the mappings: nothing of the mapping tree is
   * read or checked (a fault there is check's to report).
   */
  exclusive?: boolean;
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Mappings walked so far, out of the sum of mapped_blocks (twice that when a large pool takes two walks). */
  onProgress?: (p: { mappings: number; total: number }) => void;
  /**
   * @internal The data-device sizes (in blocks) up to which the one-walk owner
   * bytes and the flat two-bit counts are used (defaults OWNER_BYTES_MAX,
   * COUNTS_FLAT_MAX); tests pick each way with small values.
   */
  flatLimits?: { ownerBytes: number; counts: number };
}

/**
 * Data devices up to this many blocks get an owner nibble (up to 14 devices)
 * or byte (up to 254) per block (a single walk); larger ones (up to COUNTS_FLAT_MAX) two bits per block and a second
 * walk, so that memory stays near 20 MiB at 40M mappings.
 */
const OWNER_BYTES_MAX = 24 * 2 ** 20;
/** Up to here (64 MiB of two-bit counts) the counts are flat; beyond, OwnerMap's pages follow the blocks used. */
const COUNTS_FLAT_MAX = 2 ** 28;

/**
 * Usage of every device, in id order. Each data block records how often it
 * is mapped in the whole pool, so a device's EXCLUSIVE is its mappings on
 * blocks used once (thin_ls's answer). Three ways, by size: a data device up
 * to OWNER_BYTES_MAX blocks (and at most 254 devices) keeps its owner per
 * block, in half a byte for up to 14 devices, else a byte, and needs one
 * walk; one up to COUNTS_FLAT_MAX keeps two bits a block (0, 1, more uses)
 * and walks again, only when some block is shared, to
 * count each device's shared mappings; a larger one uses OwnerMap (pages on
 * first touch, 2 or 4 bytes a block used). Memory: at most 24 MiB, 64 MiB of
 * which only touched pages count, or OwnerMap's.
 */
export async function deviceUsage(md: ThinMetadata, opts: UsageOptions = {}): Promise<DeviceUsage[]> {
  check.instance(md, ThinMetadata, 'metadata');
  opts = check.walk(opts, 'deviceUsage options');
  check.boolean(opts.exclusive, 'exclusive');
  if (opts.exclusive === false) return detailsUsage(md, opts.signal);
  const { table, exclusive } = await exclusiveUsage(md, opts);
  return rowsOf(table, exclusive);
}

/**
 * @internal deviceUsage's EXCLUSIVE column: exclusive[k] for the device of
 * row k of `table` (no object per device; the CLI writes the table from the
 * columns).
 */
export async function exclusiveUsage(md: ThinMetadata, opts: UsageOptions = {}): Promise<{ table: DeviceTable; exclusive: Float64Array }> {
  check.instance(md, ThinMetadata, 'metadata');
  opts = check.walk(opts, 'deviceUsage options');
  const t = await md.deviceTable(opts);
  const ids = t.devId;
  const n = t.count;
  let sum = 0;
  for (let k = 0; k < n; k++) sum += t.mappedBlocks[k];
  const nrData = md.nrDataBlocks;
  // One walk of every mapping tree; `done` mappings of earlier passes, `total` of all passes.
  const walk = (runs: (k: number, begin: Float64Array, length: Float64Array, count: number) => void, done: number, total: number) =>
    md.walkDevices(
      ids,
      { begin: () => {}, runs: (k, b) => runs(k, b.dataBegin, b.length, b.count), end: () => {} },
      { signal: opts.signal, onProgress: opts.onProgress ? (p) => opts.onProgress!({ mappings: done + p.mappings, total }) : undefined },
    );
  let excl: Float64Array;
  const limits = opts.flatLimits ?? { ownerBytes: OWNER_BYTES_MAX, counts: COUNTS_FLAT_MAX };
  const ownerBytes = nrData <= limits.ownerBytes && n <= ByteOwnerMap.MAX_OWNERS;
  if (!ownerBytes && nrData <= limits.counts) {
    const uses = new UseCounts(nrData);
    await walk((_k, d, l, n) => {
      for (let r = 0; r < n; r++) uses.markRange(d[r], l[r]);
    }, 0, 2 * sum);
    excl = Float64Array.from(t.mappedBlocks);
    if (uses.anyShared) {
      await walk((k, d, l, n) => {
        for (let r = 0; r < n; r++) excl[k] -= uses.sharedIn(d[r], l[r]);
      }, sum, 2 * sum);
    } else if (sum > 0) {
      opts.onProgress?.({ mappings: 2 * sum, total: 2 * sum }); // no second pass: the work is done, as the bar should say
    }
  } else {
    // One walk: an owner byte a block when it fits (and the devices fit a byte), else OwnerMap's pages.
    const owners = !ownerBytes ? new OwnerMap(n) : n <= NibbleOwnerMap.MAX_OWNERS ? new NibbleOwnerMap(nrData) : new ByteOwnerMap(nrData);
    await walk((k, d, l, n) => {
      for (let r = 0; r < n; r++) owners.markRange(d[r], l[r], k);
    }, 0, sum);
    excl = owners.exclusiveCounts(n);
  }
  return { table: t, exclusive: excl };
}

/** Rows of DeviceUsage from the columns (EXCLUSIVE/SHARED null unless `exclusive` is given). */
function rowsOf(c: DetailsTable, exclusive?: Float64Array): DeviceUsage[] {
  const rows: DeviceUsage[] = new Array(c.count);
  for (let j = 0; j < c.count; j++) rows[j] = rowAt(c, j, exclusive);
  return rows;
}

/** Row j of the columns as a DeviceUsage. */
function rowAt(c: DetailsTable, j: number, exclusive?: Float64Array): DeviceUsage {
  // Fields listed, not spread from deviceAt's object: one object shape for every device.
  return {
    devId: c.devId[j],
    mappedBlocks: c.mappedBlocks[j],
    exclusiveBlocks: exclusive ? exclusive[j] : null,
    sharedBlocks: exclusive ? c.mappedBlocks[j] - exclusive[j] : null,
    transactionId: transactionIdAt(c, j),
    creationTime: c.creationTime[j],
    snapshottedTime: c.snapshottedTime[j],
  };
}

async function detailsUsage(md: ThinMetadata, signal?: AbortSignal): Promise<DeviceUsage[]> {
  return rowsOf(await md.detailsTable({ signal }));
}

const U64 = (n: bigint) => BigInt.asUintN(64, n);
const UNITS = ['', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

/**
 * thin_ls's human units: divide by 1024 (truncating) while above 1 MiB, then,
 * if still above 8 KiB, round to the next unit. So 2 MiB prints as "2048KiB",
 * 768 KiB as "768KiB" and 4 KiB as "4096".
 */
export function formatDiskUnit(bytes: bigint): string {
  // Below 2^53 the same steps in doubles are exact, and several times faster.
  if (bytes >= 0n && bytes <= MAX_SAFE) return formatDiskUnitNumber(Number(bytes));
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

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** formatDiskUnit for a byte count below 2^53 (integer division by 1024 is exact there). */
function formatDiskUnitNumber(bytes: number): string {
  let n = bytes;
  let i = 0;
  while (n > 1048576) {
    n = Math.floor(n / 1024);
    i++;
  }
  if (n > 8192) {
    n = Math.round(n / 1024);
    i++;
  }
  return `${n}${UNITS[i]}`;
}

/**
 * The text of one cell: fieldText's, with the common fields computed in
 * doubles when exact (a table of 70,000 devices spent most of its time in
 * BigInt arithmetic otherwise).
 */
function cellText(u: DeviceUsage, f: LsField, dataBlockSize: number): string {
  switch (f) {
    case 'DEV':
      return String(u.devId);
    case 'MAPPED_BLOCKS':
      return String(u.mappedBlocks);
    case 'CREATE_TIME':
      return String(u.creationTime);
    case 'SNAP_TIME':
      return String(u.snapshottedTime);
    case 'MAPPED': {
      const bytes = u.mappedBlocks * dataBlockSize * 512;
      if (bytes <= Number.MAX_SAFE_INTEGER) return formatDiskUnitNumber(bytes);
      break;
    }
  }
  return fieldText(u, f, dataBlockSize);
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
  return writeTable(
    rows.length,
    fields,
    fields.map((f) => column(rows, f, dataBlockSize, headers ? f.length : 0)),
    headers,
  ).toString('latin1');
}

/**
 * @internal formatLsTable for the fields that need no mapping walk, from the
 * details columns, written to `out` (the CLI's stdout): the same text as
 * bytes (ASCII), without an object per device nor a string of the whole
 * table, through the sink's 256 KiB chunks reused once written rather than
 * one buffer of the whole table (2.6 MB for 70,000 devices: ~650 pages the
 * kernel faults in one by one, ~12 us each on the bench VM).
 */
export async function writeDetailsTable(
  c: DetailsTable,
  fields: readonly LsField[],
  dataBlockSize: number,
  headers: boolean,
  out: SinkTarget,
  exclusive?: Float64Array,
  signal?: AbortSignal,
): Promise<void> {
  const cols = fields.length > 0 ? detailsTableColumns(c, fields, dataBlockSize, headers, exclusive) : [];
  const lineBytes = lineBytesOf(cols);
  const s = new OutputSink(out, undefined, signal, chunkSource((c.count + 1) * lineBytes));
  if (fields.length > 0) {
    if (headers) writeHeader(fields, cols, lineBytes, s);
    const slice = Math.max(1, Math.floor(TABLE_SLICE_BYTES / lineBytes));
    for (let j = 0; j < c.count; j += slice) {
      writeRows(cols, j, Math.min(c.count, j + slice), lineBytes, s);
      await s.maybeFlush();
    }
  }
  await s.flush();
}

/** Bytes of table written between two flushes of writeDetailsTable (half the sink's chunk). */
const TABLE_SLICE_BYTES = 128 * 1024;

/** Chunks cut from one huge page: the sink holds at most three when its writer hands them back. */
const HUGE_CHUNKS = (2 << 20) / OUTPUT_CHUNK_BYTES;

/**
 * The sink's chunks for output of about `bytes`: more than one chunk's
 * worth, they are cut from one huge-page mapping (the addon's
 * hugeArrayBuffer), a fault per 2 MiB where each malloc'd 256 KiB chunk
 * takes 64 (~11 us each in the bench VM: ~2 ms of a 70,000-device table);
 * once it is used up (a writer that keeps its chunks), from
 * Buffer.allocUnsafe. Smaller output, or no addon: the sink's own
 * (undefined): a huge page is zeroed whole, ~0.1-0.2 ms.
 */
function chunkSource(bytes: number): (() => Buffer) | undefined {
  if (bytes <= OUTPUT_CHUNK_BYTES) return undefined;
  // Not ??=, which takes null for unset.
  const huge = tableCells.huge === undefined ? (tableCells.huge = hugeArrayBufferFunction()) : tableCells.huge;
  if (huge === null) return undefined;
  let ab: ArrayBuffer | undefined;
  let next = 0;
  return () => {
    if (ab === undefined) {
      try {
        ab = huge(HUGE_CHUNKS * OUTPUT_CHUNK_BYTES);
      } catch {
        ab = new ArrayBuffer(0); // no memory for it: malloc's chunks, as without
      }
    }
    if (next + OUTPUT_CHUNK_BYTES > ab.byteLength) return Buffer.allocUnsafe(OUTPUT_CHUNK_BYTES);
    next += OUTPUT_CHUNK_BYTES;
    return Buffer.from(ab, next - OUTPUT_CHUNK_BYTES, OUTPUT_CHUNK_BYTES);
  };
}

function detailsTableColumns(c: DetailsTable, fields: readonly LsField[], dataBlockSize: number, headers: boolean, exclusive?: Float64Array): Column[] {
  let rows: DeviceUsage[] | undefined;
  let shared: Float64Array | undefined;
  const sharedOf = (e: Float64Array): Float64Array => (shared ??= c.mappedBlocks.map((m, k) => m - e[k]));
  return fields.map((f): Column => {
    const hw = headers ? f.length : 0;
    switch (f) {
      // The widths from the table's maxima (ids increase: the last is the
      // largest), not from a pass over each column: such a pass runs once,
      // before V8 optimises it (70,000 devices: ~9 ms for the first).
      case 'DEV': {
        const max = c.count === 0 ? 0 : c.devId[c.count - 1];
        // The addon's cells read the f64s as they are; the JS loops read u32s
        // unboxed, copied when they all are (always, for a sound pool: ids are
        // 24-bit). The copy of 70,000 ids was 68 page faults, ~0.8 ms.
        return numberColumn(cellWriter() !== null || max >= TWO32 ? c.devId : Uint32Array.from(c.devId), hw, max);
      }
      case 'MAPPED_BLOCKS':
        return numberColumn(c.mappedBlocks, hw, c.maxMappedBlocks);
      case 'CREATE_TIME':
        return numberColumn(c.creationTime, hw, c.maxCreationTime);
      case 'SNAP_TIME':
        return numberColumn(c.snapshottedTime, hw, c.maxSnapshottedTime);
      case 'MAPPED':
        return unitColumn(c.mappedBlocks, dataBlockSize, hw) ?? textColumn((rows ??= rowsOf(c, exclusive)), f, dataBlockSize, hw);
      case 'EXCLUSIVE_BLOCKS':
        if (exclusive) return numberColumn(exclusive, hw);
        break;
      case 'SHARED_BLOCKS':
        if (exclusive) return numberColumn(sharedOf(exclusive), hw);
        break;
      case 'EXCLUSIVE':
        if (exclusive) return unitColumn(exclusive, dataBlockSize, hw) ?? textColumn((rows ??= rowsOf(c, exclusive)), f, dataBlockSize, hw);
        break;
      case 'SHARED':
        if (exclusive) return unitColumn(sharedOf(exclusive), dataBlockSize, hw) ?? textColumn((rows ??= rowsOf(c, exclusive)), f, dataBlockSize, hw);
        break;
    }
    return textColumn((rows ??= rowsOf(c, exclusive)), f, dataBlockSize, hw);
  });
}

/**
 * Where the table's bytes go: `buf` from `pos`, with room for n more bytes
 * once room(n) returns (room may replace `buf`). An OutputSink is one.
 */
interface TableTarget {
  buf: Uint8Array;
  pos: number;
  room(n: number): void;
}

/** A line: every cell (right-aligned to its column's width) and a space, then a newline. */
const lineBytesOf = (cols: Column[]): number => cols.reduce((n, c) => n + c.width + 1, 1);

/** The table's bytes in one buffer: a header line (when asked) and `count` lines. */
function writeTable(count: number, fields: readonly LsField[], cols: Column[], headers: boolean): Buffer {
  const lineBytes = lineBytesOf(cols);
  const buf = Buffer.allocUnsafe((count + (headers ? 1 : 0)) * lineBytes);
  const t: TableTarget = { buf, pos: 0, room: () => undefined };
  if (headers) writeHeader(fields, cols, lineBytes, t);
  writeRows(cols, 0, count, lineBytes, t);
  return buf.subarray(0, t.pos);
}

function writeHeader(fields: readonly LsField[], cols: Column[], lineBytes: number, t: TableTarget): void {
  t.room(lineBytes);
  const buf = t.buf;
  let pos = t.pos;
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i];
    const end = pos + cols[i].width;
    for (let k = f.length; k < cols[i].width; k++) buf[pos++] = 0x20;
    for (let k = 0; k < f.length; k++) buf[pos++] = f.charCodeAt(k);
    pos = end;
    buf[pos++] = 0x20;
  }
  buf[pos++] = 0x0a;
  t.pos = pos;
}

/**
 * @internal The addon's cell writer (null without the addon): writeRows's
 * integer columns, one call a column per slice of lines. Measured on 70,000
 * devices (`ls`, a new process): the JS loops below took 10-13 ms there
 * (4.5 ms once V8 has optimised them, which a run of the CLI never waits
 * for), the addon ~2.5 ms with its page faults (~0.6 ms a column once
 * they are faulted in). `units`: the addon's human units of a MAPPED,
 * EXCLUSIVE or SHARED column (unitColumn; ~3.5 ms of JS there). Tests set
 * them to null to run the JS loops. `huge`: the addon's hugeArrayBuffer,
 * where a large table's output chunks come from (chunkSource; null: the
 * sink's own).
 */
export const tableCells: {
  write: ReturnType<typeof decimalCellsFunction> | undefined;
  units: ReturnType<typeof diskUnitsFunction> | undefined;
  huge: ReturnType<typeof hugeArrayBufferFunction> | undefined;
} = {
  write: undefined,
  units: undefined,
  huge: undefined,
};

/** tableCells.write, looked up on first use: null (no addon, or a test) means the JS loops. */
function cellWriter(): ReturnType<typeof decimalCellsFunction> {
  // Not ??=, which takes null for unset.
  return tableCells.write === undefined ? (tableCells.write = decimalCellsFunction()) : tableCells.write;
}

/** Lines [from, to) of the table (room is asked once, for all of them). */
function writeRows(cols: Column[], from: number, to: number, lineBytes: number, t: TableTarget): void {
  if (from >= to) return;
  const cells = cellWriter();
  if (cells !== null) {
    t.room((to - from) * lineBytes);
    let at = t.pos;
    for (let c = 0; c < cols.length; c++) {
      const col = cols[c];
      const last = c === cols.length - 1;
      if (col.nums !== null) cells(t.buf, at, lineBytes, col.nums, from, to, col.width, last, col.units ?? undefined, col.units ? UNITS : undefined);
      else textCells(t.buf, at, lineBytes, col.texts!, from, to, col.width, last);
      at += col.width + 1;
    }
    t.pos += (to - from) * lineBytes;
    return;
  }
  // Without the addon: line by line into the byte buffer; integer cells (and MAPPED's
  // number and unit) are written digit by digit, without a string per cell;
  // a 70,000-device table spent most of its time making and collecting those
  // strings. The loops are plain and monomorphic: a CLI run is over before
  // V8 optimises much, so what counts is the work per cell in its first tiers.
  t.room((to - from) * lineBytes);
  const buf = t.buf;
  let pos = t.pos;
  for (let j = from; j < to; j++) {
    for (let c = 0; c < cols.length; c++) {
      const col = cols[c];
      const nums = col.nums;
      if (nums === null) {
        const text = col.texts![j];
        const end = pos + col.width;
        for (let k = text.length; k < col.width; k++) buf[pos++] = 0x20;
        for (let k = 0; k < text.length; k++) buf[pos++] = text.charCodeAt(k);
        pos = end;
        buf[pos++] = 0x20;
        continue;
      }
      // Right-aligned: the unit's letters, then the digits, written from the end; the rest is spaces.
      let k = pos + col.width - 1;
      if (col.units !== null) {
        const unit = UNITS[col.units[j]];
        for (let u = unit.length - 1; u >= 0; u--) buf[k--] = unit.charCodeAt(u);
      }
      let n = nums[j];
      if (n < 2147483648) {
        // Below 2^31 (every id and time, most counts): int32 division, which
        // V8 turns into a multiplication (70,000 devices, a new process:
        // writeRows 9.3 -> 7.4 ms).
        let m = n | 0;
        do {
          const q = (m / 10) | 0;
          buf[k--] = 0x30 + (m - q * 10);
          m = q;
        } while (m > 0);
      } else {
        // % and an exact division: integers all the way (no boxed doubles before V8 optimises).
        do {
          const r = n % 10;
          buf[k--] = 0x30 + r;
          n = (n - r) / 10;
        } while (n > 0);
      }
      while (k >= pos) buf[k--] = 0x20;
      pos += col.width;
      buf[pos++] = 0x20;
    }
    buf[pos++] = 0x0a;
  }
  t.pos = pos;
}

/** A column of cell strings: each right-aligned in `width` bytes and a space (and a newline when `newline`), one line (`stride` bytes) apart. */
function textCells(buf: Uint8Array, at: number, stride: number, texts: string[], from: number, to: number, width: number, newline: boolean): void {
  for (let j = from; j < to; j++, at += stride) {
    const text = texts[j];
    let p = at;
    for (let k = text.length; k < width; k++) buf[p++] = 0x20;
    for (let k = 0; k < text.length; k++) buf[p++] = text.charCodeAt(k);
    buf[at + width] = 0x20;
    if (newline) buf[at + width + 1] = 0x0a;
  }
}

/** A table column: integers (with a thin_ls unit index each, for MAPPED) or, for the rest, cell strings. */
interface Column {
  nums: Float64Array | Uint32Array | null;
  units: Uint8Array | null;
  texts: string[] | null;
  width: number;
}

function column(rows: DeviceUsage[], f: LsField, dataBlockSize: number, headerWidth: number): Column {
  const n = rows.length;
  const nums = new Float64Array(n);
  // One loop per field, each reading one property: no per-cell closure or switch.
  switch (f) {
    case 'DEV':
      for (let j = 0; j < n; j++) nums[j] = rows[j].devId;
      break;
    case 'MAPPED_BLOCKS':
    case 'MAPPED':
      for (let j = 0; j < n; j++) nums[j] = rows[j].mappedBlocks;
      break;
    case 'CREATE_TIME':
      for (let j = 0; j < n; j++) nums[j] = rows[j].creationTime;
      break;
    case 'SNAP_TIME':
      for (let j = 0; j < n; j++) nums[j] = rows[j].snapshottedTime;
      break;
    default:
      return textColumn(rows, f, dataBlockSize, headerWidth);
  }
  if (f === 'MAPPED') return unitColumn(nums, dataBlockSize, headerWidth) ?? textColumn(rows, f, dataBlockSize, headerWidth);
  return numberColumn(nums, headerWidth);
}

/** `max`: the largest of `nums`, when known. */
function numberColumn(nums: Float64Array | Uint32Array, headerWidth: number, max = -1): Column {
  if (max < 0) for (let j = 0; j < nums.length; j++) if (nums[j] > max) max = nums[j];
  return { nums, units: null, texts: null, width: Math.max(headerWidth, digits(max)) };
}

/**
 * MAPPED in thin_ls's human units (formatDiskUnitNumber) from the block
 * counts in `nums`: the printed numbers (below 2^21) and units; null when a
 * byte count is beyond 2^53, where only the bigint path is exact.
 */
function unitColumn(nums: Float64Array, dataBlockSize: number, headerWidth: number): Column | null {
  const units = new Uint8Array(nums.length);
  const out = new Uint32Array(nums.length);
  const bytesPerBlock = dataBlockSize * 512;
  let width = headerWidth;
  const native = tableCells.units === undefined ? (tableCells.units = diskUnitsFunction()) : tableCells.units;
  if (native !== null) {
    const maxPerUnit = new Float64Array(UNITS.length);
    if (!native(nums, bytesPerBlock, out, units, maxPerUnit)) return null;
    // A unit past the first appears only with numbers of 1 and more: 0 means none.
    for (let i = 0; i < UNITS.length; i++) if (i === 0 || maxPerUnit[i] > 0) width = Math.max(width, digits(maxPerUnit[i]) + UNITS[i].length);
    return { nums: out, units, texts: null, width };
  }
  // Neighbours often map as many blocks (snapshots of one origin): the last answer is kept.
  let lastBlocks = -1;
  let lastV = 0;
  let lastI = 0;
  for (let j = 0; j < nums.length; j++) {
    if (nums[j] === lastBlocks) {
      out[j] = lastV;
      units[j] = lastI;
      continue;
    }
    lastBlocks = nums[j];
    let v = nums[j] * bytesPerBlock;
    if (v > Number.MAX_SAFE_INTEGER) return null;
    let i = 0;
    while (v > 1048576) {
      v = Math.floor(v / 1024);
      i++;
    }
    if (v > 8192) {
      v = Math.round(v / 1024);
      i++;
    }
    out[j] = lastV = v;
    units[j] = lastI = i;
    const w = digits(v) + UNITS[i].length;
    if (w > width) width = w;
  }
  return { nums: out, units, texts: null, width };
}

function textColumn(rows: DeviceUsage[], f: LsField, dataBlockSize: number, headerWidth: number): Column {
  const texts = rows.map((u) => cellText(u, f, dataBlockSize));
  return { nums: null, units: null, texts, width: texts.reduce((w, c) => Math.max(w, c.length), headerWidth) };
}

/** Decimal digits of a non-negative integer (comparisons only: no boxed doubles before V8 optimises). */
function digits(n: number): number {
  let d = 1;
  for (let p = 10; n >= p; p *= 10) d++;
  return d;
}

/** Rows as JSON objects keyed by LS_JSON_KEYS, typed as docs/json.md says (u64s as decimal strings). */
/**
 * @internal `JSON.stringify(lsJson(rows, fields, dataBlockSize), null, 2)`
 * and a newline, for the rows of the device table (EXCLUSIVE/SHARED from
 * `exclusive` when given), written to `out` element by element through the
 * sink's reused chunks: neither an object per device held nor the text of
 * the whole array (70,000 devices took ~100 MiB that way).
 */
export async function writeLsJson(c: DetailsTable, fields: readonly LsField[], dataBlockSize: number, out: SinkTarget, exclusive?: Float64Array, signal?: AbortSignal): Promise<void> {
  // Each element is ~30 bytes a field or more (two-space indents, a key, a value): enough to tell a large array.
  const s = new OutputSink(out, undefined, signal, chunkSource(c.count * 30 * Math.max(1, fields.length)));
  // JSON.stringify's pretty print of an array of flat objects, written out:
  // `[`, each element two spaces in with its keys four, `]` (`[]`, `{}` when empty).
  // Fields that share a key (MAPPED and MAPPED_BYTES are both mappedBytes)
  // make one member, where the key first came, with the last field's value,
  // as assigning them to one object does.
  const at = new Map<string, number>();
  const cols: LsField[] = [];
  for (const f of fields) {
    const i = at.get(LS_JSON_KEYS[f]);
    if (i === undefined) at.set(LS_JSON_KEYS[f], cols.push(f) - 1);
    else cols[i] = f;
  }
  const keys = cols.map((f) => `    ${JSON.stringify(LS_JSON_KEYS[f])}: `);
  if (c.count === 0) s.ascii('[]\n');
  else {
    let text = '[\n';
    for (let j = 0; j < c.count; j++) {
      const u = rowAt(c, j, exclusive);
      if (j > 0) text += ',\n';
      if (cols.length === 0) text += '  {}';
      else {
        text += '  {\n';
        for (let k = 0; k < cols.length; k++) {
          const v = fieldJson(u, cols[k], dataBlockSize);
          text += `${keys[k]}${typeof v === 'string' ? JSON.stringify(v) : v}${k + 1 < cols.length ? ',\n' : '\n  }'}`;
        }
      }
      if (text.length >= 16384) {
        s.ascii(text);
        text = '';
        if (s.needsFlush()) await s.maybeFlush();
      }
    }
    s.ascii(text + '\n]\n');
  }
  await s.flush();
}

export function lsJson(rows: DeviceUsage[], fields: readonly LsField[], dataBlockSize: number): Record<string, number | string>[] {
  return rows.map((u) => {
    const o: Record<string, number | string> = {};
    for (const f of fields) o[LS_JSON_KEYS[f]] = fieldJson(u, f, dataBlockSize);
    return o;
  });
}
