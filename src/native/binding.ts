/**
 * Typed view of the native addon (native/). Only this file touches `bindings`;
 * every native call is typed here or, for the two the CLI's start-up makes
 * before this module loads, in addon-file.ts (no untyped escape hatch). The
 * I/O classes every layer uses wrap these: block-reader.ts and block-writer.ts.
 */
import { join } from 'node:path';
import { SetupError } from '../errors';
import { addonFile, type FileMapFunctions } from './addon-file';

import type { NativeBlockReader } from './reader-contract';
export type { NativeBlockReader, NativeDetailsWalk, NativeOpenInfo, NativeReadResult } from './reader-contract';

export interface NativeWriterOpenOptions {
  direct?: 'auto' | 'always' | 'never';
  create?: boolean;
  exclusive?: boolean;
  mode?: number;
}

/** What the addon's writer found at open. @inline */
export interface NativeWriterInfo {
  /** Size in bytes at open. */
  size: number;
  /** It is a block device. */
  blockDevice: boolean;
  /** Writes bypass the page cache (O_DIRECT). */
  direct: boolean;
  /** The device's logical block size in bytes (the alignment O_DIRECT needs). */
  logicalBlockSize: number;
  /** The file was created by this open. */
  created: boolean;
}

/** How a range was discarded. */
export type DiscardMethod = 'blkdiscard' | 'punch-hole' | 'none';
/** How a range was zeroed. */
export type ZeroOutMethod = 'blkzeroout' | 'zero-range' | 'written' | 'none';

export interface NativeBlockWriter {
  open(path: string, opts: NativeWriterOpenOptions): Promise<NativeWriterInfo>;
  write(offsets: Float64Array, buffers: Uint8Array[]): Promise<{ bytes: number; writes: number }>;
  discard(offset: number, length: number): Promise<DiscardMethod>;
  /** Offset, length pairs (ascending, disjoint), discarded in one call on one thread. */
  discardMany(ranges: Float64Array): Promise<DiscardMethod>;
  zeroOut(offset: number, length: number): Promise<ZeroOutMethod>;
  extend(size: number): Promise<number>;
  fsync(): Promise<void>;
  size(): number;
  close(): void;
}

/** Layout and constants taken from <linux/dm-ioctl.h> at build time. */
export interface NativeDmConstants {
  headerVersion: { major: number; minor: number; patch: number };
  controlPath: string;
  dir: string;
  nameLen: number;
  uuidLen: number;
  maxTypeName: number;
  initialBufferSize: number;
  maxBufferSize: number;
  /** Command name (`DM_VERSION`...) -> number. */
  commands: Record<string, number>;
  /** Command name -> ioctl request code (_IOWR(0xfd, nr, struct dm_ioctl)). */
  requests: Record<string, number>;
  commandNames: string[];
  /** Flag macro name -> value. */
  flags: Record<string, number>;
  /** struct name -> { size, <field>: offsetof }. */
  layout: Record<string, Record<string, number>>;
}

export interface NativeDmIoctlOptions {
  /** Defaults to /dev/mapper/control. */
  controlPath?: string;
  /** Largest result buffer the BUFFER_FULL retry may grow to (default 64 MiB). */
  maxBufferSize?: number;
}

/**
 * A descriptor on the dm control node that polls readable once any dm device
 * raises an event after the last arm() (DM_DEV_ARM_POLL). Waiting uses the
 * event loop (uv_poll), never a worker thread.
 */
export interface NativeDmPoll {
  /** Opens the control node (non-blocking). Throws Node-shaped errors. */
  open(controlPath: string): void;
  /** DM_DEV_ARM_POLL on this descriptor; throws with `ioctl` set (ENOTTY before Linux 4.13). */
  arm(): void;
  /** true when the descriptor polls readable; false if close() came first. One wait at a time. */
  readable(): Promise<boolean>;
  /** Stops a pending wait (it resolves false) and closes the descriptor. Idempotent. */
  close(): void;
}

/**
 * A stream digest (docs/stream-format.md §6) hashed on threads of the addon's
 * own: update() copies into a ring (blocking only while the ring is full) and
 * returns; digest() waits for the queued bytes, then ends the threads.
 */
export interface NativeDigestPipe {
  update(data: Uint8Array): void;
  /** Queues `data` itself (referenced, not copied) after what is queued: it must not change until hashed. */
  updateHeld(data: Uint8Array): void;
  /** Bytes queued and not hashed yet. */
  queued(): number;
  /** Resolves once at most `bytes` are queued (off the JS thread). */
  ready(bytes: number): Promise<void>;
  digest(): Buffer;
  /** The ring's size in bytes. */
  capacity(): number;
  /** The digest's segment size (0: version 1's single SHA-256). */
  segmentBytes(): number;
  /** The hash function: 'sha256' or 'blake3'. */
  algorithm(): 'sha256' | 'blake3';
  /** Stops hashing (the stream will not be finished), joins the thread and lets go of held buffers; digest() then throws. */
  abort(): void;
}

/** Byte ranges of a file or block device read into a buffer the caller reuses (native/range_reader.cc). */
export interface NativeRangeReader {
  open(path: string, direct?: 'auto' | 'always' | 'never'): Promise<{ size: number; direct: boolean }>;
  /** `ranges`: [bufferOffset, fileOffset, length] triples; several pieces in flight. */
  readInto(buf: Buffer, ranges: Float64Array): Promise<void>;
  close(): void;
}

export interface NativeAddon {
  crc32c(data: Uint8Array, seed?: number, raw?: boolean): number;
  crc32cTable(data: Uint8Array): number;
  crc32cHardware(): boolean;
  /**
   * Integer cells of a fixed-width text table (native/decimal_cells.cc), on
   * the calling thread: for each row j in [from, to), values[j] and then
   * unitNames[units[j]] (when given) right-aligned in `width` bytes at
   * dst[at + (j - from) * stride], a space after, and a newline after that
   * when `newline`. Values are integers in [0, 2^53). Throws a RangeError,
   * writing nothing, when a cell is wider than `width` or lies beyond dst.
   */
  writeDecimalCells(
    dst: Uint8Array,
    at: number,
    stride: number,
    values: Uint32Array | Float64Array,
    from: number,
    to: number,
    width: number,
    newline: boolean,
    units?: Uint8Array,
    unitNames?: readonly string[],
  ): void;
  /**
   * One device-details leaf's entries appended to the columns of
   * thin/device-table.ts (native/details_columns.cc), on the calling
   * thread: entry i's key at words[keysAt + 2i] (two little-endian words),
   * its 24-byte value at words[valuesAt + 6i], into row at + i. `columns`
   * holds R rows in 4R + 3 f64s: device ids, mapped_blocks, then from byte
   * 16R u32 transaction id low and high words, creation and snapshotted
   * times, then the three maxima (raised). Returns -1, or the first entry
   * whose key or mapped_blocks is 2^53 or more (it and those after it not
   * written). Throws a RangeError, writing nothing, on entries or rows
   * beyond their arrays, or columns sharing memory with the words.
   */
  decodeDetailsLeaf(words: Uint32Array, keysAt: number, valuesAt: number, count: number, at: number, columns: Float64Array): number;
  /**
   * thin_ls's human units of blocks[j] * bytesPerBlock for each row
   * (native/decimal_cells.cc): the number in values[j], the suffix index in
   * units[j], the largest number of each suffix in maxPerUnit (7 entries).
   * False (the rows partly written) when a byte count is not an integer
   * below 2^53.
   */
  diskUnits(blocks: Float64Array, bytesPerBlock: number, values: Uint32Array, units: Uint8Array, maxPerUnit: Float64Array): boolean;
  /**
   * std::sort's permutation of keys[0, n) with introsort depth `depth`
   * (native/std_sort.cc): out[i] is the index of the key at position i.
   * Throws a RangeError, out untouched, on a NaN key or n beyond the arrays.
   */
  stdSortOrder(keys: Float64Array, n: number, depth: number, out: Uint32Array): void;
  /**
   * std::sort's partition step over a file of n 32-byte run records (rmap's
   * spilled runs, native/std_sort.cc): records [first, last) around the key
   * pivotKey of record pivot (< first); returns the cut. IO errors are
   * Node-shaped (code, errno, syscall pread or pwrite).
   */
  partitionRunFile(fd: number, n: number, first: number, last: number, pivot: number, pivotKey: number): number;
  /**
   * rmap's lines for runs order[from..to) of `records` (32-byte run records,
   * src/thin/rmap-runs.ts) at dst[at...] (native/rmap_lines.cc); returns the
   * end. Needs rmapLineMaxBytes a line; throws a RangeError, writing nothing,
   * on a bad record or too little room.
   */
  writeRmapLines(dst: Uint8Array, at: number, records: Uint32Array, order: Uint32Array, from: number, to: number): number;
  /** The longest line writeRmapLines writes. */
  rmapLineMaxBytes: number;
  BlockReader: new () => NativeBlockReader;
  BlockWriter: new () => NativeBlockWriter;
  /**
   * segmentBytes 0 or absent: one SHA-256 on one thread (format version 1); else a segmented digest on up to four:
   * algorithm 'sha256' (default; version 2) or 'blake3' (versions 3 and 4).
   */
  DigestPipe: new (ringBytes?: number, segmentBytes?: number, algorithm?: 'sha256' | 'blake3') => NativeDigestPipe;
  /** SHA-256 of the parts in order, on the calling thread (small inputs). */
  sha256(parts: Uint8Array[]): Buffer;
  /** `ioUring: false`: through libuv's thread pool only (tests of that path). */
  RangeReader: new (options?: { ioUring?: boolean }) => NativeRangeReader;
  /** A 4096-aligned Uint8Array (for O_DIRECT reads into it), in memory V8 owns. */
  alignedBuffer(bytes: number): Uint8Array;
  DmPoll: new () => NativeDmPoll;
  /**
   * One dm ioctl on a worker thread. `request` is struct dm_ioctl plus its
   * payload; the result is struct dm_ioctl plus results (data_size bytes,
   * never less than the struct). Result-returning commands start at 16 KiB
   * and double while the kernel sets DM_BUFFER_FULL_FLAG. Rejects with a
   * Node-shaped error carrying `ioctl` (command name) and `device`.
   */
  dmIoctl(command: number, request: Uint8Array, opts?: NativeDmIoctlOptions): Promise<Buffer>;
  /** Same, on the calling thread: only for exit paths (releasing a metadata snapshot). */
  dmIoctlSync(command: number, request: Uint8Array, opts?: NativeDmIoctlOptions): Buffer;
  /** Block device node with exactly `mode` (umask-proof). Throws Node-shaped errors. */
  mknodBlock(path: string, major: number, minor: number, mode: number): void;
  /** Removes `path` only if it is a block node for major:minor; false otherwise. */
  unlinkNode(path: string, major: number, minor: number): boolean;
  /**
   * flock(fd, LOCK_EX or LOCK_SH | LOCK_NB): true when taken, false when a
   * conflicting lock is held elsewhere. The lock belongs to the open file
   * description: closing it (or the process dying) drops it.
   */
  flockNonBlocking(fd: number, exclusive: boolean): boolean;
  /**
   * Creates `tmp` (O_EXCL, 0600), writes `data`, fsyncs and closes it, then
   * links it to `path` and unlinks it (`ifAbsent`; false when `path` exists)
   * or renames it over `path`, and fsyncs `dir` when `path` was written: one
   * task on a libuv thread (native/file_put.cc). On failure `tmp` is gone.
   */
  putFileDurable(tmp: string, path: string, dir: string, data: Uint8Array, ifAbsent: boolean): Promise<boolean>;
  /** Ends the process with `status` (_exit) if it is still alive `graceMs` from now; once per process (native/exit_guard.cc). */
  armExitGuard(status: number, graceMs: number): boolean;
  exitNow(status: number): never;
  /** glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD (native/allocator.cc); false where malloc is not glibc's. */
  tuneAllocator(mmapThreshold: number, trimThreshold: number): boolean;
  /**
   * `bytes` (1..2^30) of zero memory in transparent huge pages where the
   * kernel has them (native/allocator.cc), unmapped when collected.
   */
  hugeArrayBuffer(bytes: number): ArrayBuffer;
  /** native/file_map.cc, typed in addon-file.ts (the CLI's start-up calls them before this module loads). */
  mapAscii: FileMapFunctions['mapAscii'];
  mapBytes: FileMapFunctions['mapBytes'];
  readAscii: FileMapFunctions['readAscii'];
  statFile: NonNullable<FileMapFunctions['statFile']>;
  dmConstants: NativeDmConstants;
}

let addon: NativeAddon | undefined;
let allocatorTuning: { mmapThreshold: number; trimThreshold: number } | undefined;

/**
 * The addon, loaded on first use (so --help, usage errors and the pure-JS
 * parts run without it). A missing or unloadable build is one SetupError
 * (kind 'no-native-addon') that says how to rebuild, not the `bindings`
 * package's list of the paths it tried.
 */
export function native(): NativeAddon {
  if (!addon) {
    try {
      addon = loadAddon(join(__dirname, '..', '..')) as NativeAddon;
    } catch (e) {
      throw addonError(e);
    }
    if (allocatorTuning) addon.tuneAllocator(allocatorTuning.mmapThreshold, allocatorTuning.trimThreshold);
  }
  return addon;
}

/**
 * The CLI's malloc thresholds (native/allocator.cc), set when this module
 * loads the addon: every command that reads metadata or data does before
 * its work, and --help, which never asks for it, keeps glibc's defaults
 * (the CLI's start-up may have loaded the file to map its module pack,
 * addon-file.ts, which sets nothing). Only the CLI calls this: a library
 * leaves its host's allocator alone.
 */
export function tuneAllocatorOnLoad(mmapThreshold: number, trimThreshold: number): void {
  allocatorTuning = { mmapThreshold, trimThreshold };
  if (addon) addon.tuneAllocator(mmapThreshold, trimThreshold);
}

/**
 * The addon at addonFile()'s places (build/, Debug, Release: the order in
 * which `bindings` tries them), loaded directly; any other layout through
 * `bindings`. `bindings` finds the file by requiring each of its ~13
 * candidate paths until one loads (resolution and a thrown error per miss,
 * Debug before Release): ~2-4 ms of every command's start-up, more than the
 * dlopen.
 */
function loadAddon(root: string): unknown {
  const file = addonFile(root);
  if (file !== undefined) return require(file);
  // module_root: the package's folder (bindings otherwise finds it by parsing a stack trace).
  // `bindings` itself is loaded only here: importing this module costs a command that never loads the addon nothing.
  const bindings = require('bindings') as typeof import('bindings');
  return bindings({ bindings: 'dmthin', module_root: root });
}

/**
 * Arms the exit guard (native/exit_guard.cc: Node 20 can deadlock while the
 * process ends, nodejs/node#54918) if the addon is loaded; a command that
 * never loaded it did not load it for this. False when not armed.
 */
export function armExitGuard(status: number, graceMs: number): boolean {
  return addon?.armExitGuard(status, graceMs) ?? false;
}

/** True once the addon is loaded (this process has used it). */
export function addonLoaded(): boolean {
  return addon !== undefined;
}

/** Ends the process now with `status` (_exit(2), native/exit_guard.cc); the addon must be loaded. */
export function exitNow(status: number): never {
  return native().exitNow(status);
}

/** The addon's putFileDurable, or null where the addon does not load (the caller then uses Node's fs). */
export function putFileDurableFunction(): NativeAddon['putFileDurable'] | null {
  try {
    return native().putFileDurable;
  } catch (e) {
    if (e instanceof SetupError) return null;
    throw e;
  }
}

/**
 * One of the addon's CPU helpers, or null where the addon does not load or
 * (built before it had the function: a checkout updated without a rebuild)
 * lacks it; the caller then does the work in JS.
 */
function optionalFunction<K extends 'writeDecimalCells' | 'decodeDetailsLeaf' | 'hugeArrayBuffer' | 'diskUnits' | 'stdSortOrder' | 'partitionRunFile' | 'writeRmapLines'>(name: K): NativeAddon[K] | null {
  try {
    const f = native()[name] as NativeAddon[K] | undefined;
    return typeof f === 'function' ? f : null;
  } catch (e) {
    if (e instanceof SetupError) return null;
    throw e;
  }
}

/** The addon's writeDecimalCells, or null (the caller then writes the cells itself). */
export function decimalCellsFunction(): NativeAddon['writeDecimalCells'] | null {
  return optionalFunction('writeDecimalCells');
}

/** The addon's decodeDetailsLeaf, or null (the caller then decodes the leaf itself). */
export function detailsLeafFunction(): NativeAddon['decodeDetailsLeaf'] | null {
  return optionalFunction('decodeDetailsLeaf');
}

/** The addon's hugeArrayBuffer, or null (the caller then allocates its buffer itself). */
export function hugeArrayBufferFunction(): NativeAddon['hugeArrayBuffer'] | null {
  return optionalFunction('hugeArrayBuffer');
}

/** The addon's diskUnits, or null (the caller then computes the units itself). */
export function diskUnitsFunction(): NativeAddon['diskUnits'] | null {
  return optionalFunction('diskUnits');
}

/** The addon's stdSortOrder, or null (the caller then sorts in JS). */
export function stdSortFunction(): NativeAddon['stdSortOrder'] | null {
  return optionalFunction('stdSortOrder');
}

/** The addon's partitionRunFile, or null (the caller then partitions through its own cache). */
export function partitionRunFileFunction(): NativeAddon['partitionRunFile'] | null {
  return optionalFunction('partitionRunFile');
}

/** The addon's writeRmapLines with its line bound, or null (the caller then writes the lines itself). */
export function rmapLinesFunction(): { write: NativeAddon['writeRmapLines']; maxLine: number } | null {
  const write = optionalFunction('writeRmapLines');
  return write ? { write, maxLine: native().rmapLineMaxBytes } : null;
}

/** CRC-32C (the addon's contract): the addon's when it loads, else the portable one. */
export function crc32cFunction(): NativeAddon['crc32c'] {
  try {
    return native().crc32c;
  } catch (e) {
    if (e instanceof SetupError) return require('./portable').crc32cPortable;
    throw e;
  }
}

/**
 * SHA-256 of the parts in order (small inputs: snapshot identities): the
 * addon's, else node:crypto's. The addon is loaded by every command that
 * reads anything; node:crypto would cost 3-6 ms of start-up to load.
 */
export function sha256Of(parts: Uint8Array[]): Buffer {
  let a: NativeAddon | undefined;
  try {
    a = native();
  } catch (e) {
    if (!(e instanceof SetupError)) throw e;
  }
  if (a?.sha256) return a.sha256(parts);
  const h = (require('node:crypto') as typeof import('node:crypto')).createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}

/** A 4096-aligned Buffer (V8-owned memory from the addon), for O_DIRECT reads and writes in place. */
export function alignedBuffer(bytes: number): Buffer {
  const a = native().alignedBuffer(bytes);
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/** A BlockReader: the addon's, else (no addon) the portable one, which reads regular files only. */
export function newBlockReader(): NativeBlockReader {
  try {
    return new (native().BlockReader)();
  } catch (e) {
    if (!(e instanceof SetupError)) throw e;
    const { PortableBlockReader } = require('./portable') as typeof import('./portable');
    return new PortableBlockReader(e);
  }
}

const REBUILD =
  "run 'npm rebuild dmthin' in the project that installed it (in a dmthin clone: 'npm run build:native'); building needs python3, make, g++ and the Node.js headers";

function addonError(e: unknown): SetupError {
  const err = e as { code?: unknown; message?: unknown };
  const text = typeof err?.message === 'string' ? err.message : String(e);
  // dist/native/ or src/native/ -> the package root, where node-gyp builds.
  const expected = join(__dirname, '..', '..', 'build', 'Release', 'dmthin.node');
  if (/^Could not locate the bindings file/.test(text))
    return new SetupError('no-native-addon', 'MODULE_NOT_FOUND', `dmthin's native addon is not built (${expected} does not exist): ${REBUILD}`, { path: expected, cause: e });
  // dlopen's reason (a bad ELF header, another NODE_MODULE_VERSION, a missing
  // library) can span lines: one line is kept.
  const reason = text.replace(/\s*\n\s*/g, ' ').trim();
  const code = typeof err?.code === 'string' ? err.code : 'ERR_DLOPEN_FAILED';
  return new SetupError('no-native-addon', code, `dmthin's native addon does not load (${reason}): ${REBUILD}`, { syscall: 'dlopen', cause: e });
}
