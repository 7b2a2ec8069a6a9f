/**
 * Where the addon's file is, and the calls the CLI's start-up makes
 * before any other module loads (src/cli/startup.ts maps its module pack
 * with them, and sets V8's collector up). Kept apart from binding.ts, which imports the error module:
 * what start-up loads before the pack is compiled from source on every run.
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The first of build/dmthin.node, build/Debug/dmthin.node and
 * build/Release/dmthin.node under `root` that is a file (the order in which
 * `bindings` tries them), or undefined: another layout, which only
 * `bindings` finds (binding.ts).
 */
export function addonFile(root: string): string | undefined {
  for (const dir of [['build'], ['build', 'Debug'], ['build', 'Release']]) {
    const file = join(root, ...dir, 'dmthin.node');
    if (statSync(file, { throwIfNoEntry: false })?.isFile()) return file;
  }
  return undefined;
}

/** native/file_map.cc: bytes of an open regular file, mapped (MAP_PRIVATE) or read, unmapped when collected. */
export interface FileMapFunctions {
  /**
   * [offset, offset + length) as a string without a copy; null when that cannot be (any byte >= 0x80, past the end, length 0, no external strings in this Node).
   * `checked`: the caller has found the bytes to be ASCII already: they are not scanned (nor touched) again.
   */
  mapAscii(fd: number, offset: number, length: number, checked?: boolean): string | null;
  /** [offset, offset + length) as bytes without a copy; null when that cannot be (past the end, length 0). */
  mapBytes(fd: number, offset: number, length: number): Uint8Array | null;
  /** mapAscii's string, read into private memory (nothing to fault if the file is changed later); null when that cannot be (also a failed read). */
  readAscii(fd: number, offset: number, length: number, checked?: boolean): string | null;
  /**
   * stat(2) of `path` into out[0..2] (size, ctime in ms as Node's ctimeMs, 1 for a regular file else 0); false where it fails.
   * Start-up's freshness check of packed files, without a Stats object and four Dates each. Absent in an addon built before it.
   */
  statFile?(path: string, out: Float64Array): boolean;
  /** The addon's CRC-32C (binding.ts's contract): start-up checks its pack with it. */
  crc32c(data: Uint8Array, seed?: number, raw?: boolean): number;
  /**
   * V8's minor GC task on or off for the process (native/allocator.cc): the
   * CLI's start-up turns it off before it compiles anything. Absent in an addon built before it.
   */
  minorGcTask?(on: boolean): void;
  /**
   * V8's --semi-space-growth-factor for the process (native/allocator.cc):
   * the CLI's start-up sets 1, which keeps the young generation at its
   * initial 1 MiB a semi-space. Absent in an addon built before it.
   */
  semiSpaceGrowth?(factor: number): void;
  /**
   * Full (mark-compact) collections of this isolate since the first call,
   * which starts counting (native/allocator.cc). Absent in an addon built before it.
   */
  majorGcCount?(): number;
}

/**
 * The addon's file-mapping calls, or null: no addon at one of
 * addonFile()'s places, or one that does not load or predates them.
 * Loading it here is the load binding.ts makes later (same path, Node's
 * module cache).
 */
export function fileMapFunctions(root: string): FileMapFunctions | null {
  try {
    const file = addonFile(root);
    if (file === undefined) return null;
    const a = require(file) as Partial<FileMapFunctions>;
    return typeof a.mapAscii === 'function' && typeof a.mapBytes === 'function' && typeof a.readAscii === 'function' && typeof a.crc32c === 'function'
      ? (a as FileMapFunctions)
      : null;
  } catch {
    return null;
  }
}
