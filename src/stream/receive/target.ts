/**
 * The receiving target: what kind it is, and how a range is made to read back
 * as zeros on it (what a stream's discard records ask for).
 *
 *  - regular file: punch a hole (sparse, reads zeros); zero-range or written
 *    zeros if the filesystem cannot punch;
 *  - dm-thin device (no external origin): BLKDISCARD unprovisions whole pool
 *    blocks, which then read as zeros. dm-thin ignores the parts of a discard
 *    that do not cover a whole pool block, so the range is cut at the device's
 *    discard granularity and the ragged edges are zeroed instead;
 *    When that granularity (the pool's block size) is not a power of two,
 *    each discarded range is read back and what still is not zeros is zeroed:
 *    the block layer of some kernels (6.1 among them) splits such discards
 *    with power-of-two rounding, dm-thin then sees only partial blocks and
 *    silently unmaps nothing;
 *  - any other block device: BLKZEROOUT (BLKDISCARD does not promise zeros
 *    there), else written zeros.
 */
import { readFile, stat } from 'node:fs/promises';
import { DmthinError, isSystemError, SystemCallError } from '../../errors';
import { BlockReader } from '../../native/block-reader';
import { devNumOf } from '../../dm/block-devices';
import type { BlockWriter } from '../../native/block-writer';

/**
 * How discard records are applied: 'auto' picks 'punch' (hole punching) for
 * a regular file, 'discard' for a dm thin volume, 'zeroout' for other block
 * devices.
 */
export type ZeroMethod = 'auto' | 'discard' | 'zeroout' | 'punch';
/** The zero methods, the one list receive and restore check their option against. */
export const ZERO_METHODS: readonly ZeroMethod[] = ['auto', 'discard', 'zeroout', 'punch'];

export interface TargetInfo {
  path: string;
  exists: boolean;
  blockDevice: boolean;
  /** Regular file size from stat (block devices: see the writer). */
  fileSize?: number;
  dev?: { major: number; minor: number };
  /** A dm thin device without an external origin: discarded blocks read as zeros. */
  thin: boolean;
  /** Bytes (0 = unknown or no discard support). */
  discardGranularity: number;
}

async function sysfs(dev: { major: number; minor: number }, rel: string): Promise<string | undefined> {
  try {
    return (await readFile(`/sys/dev/block/${dev.major}:${dev.minor}/${rel}`, 'utf8')).trim();
  } catch {
    return undefined;
  }
}

/** What to do about a target smaller than the device (receive's and restore's refusal; the CLI says --create for option create). */
export function tooSmallAdvice(blockDevice: boolean, deviceSize: number): string {
  return blockDevice ? `give a device of at least ${deviceSize} bytes (or grow this one)` : `option create grows the file, or give a target of at least ${deviceSize} bytes`;
}

/**
 * Grows an existing file target to `size` right after a job (receive,
 * restore: `job`) recorded itself pending in its state file. A grow that
 * fails changed nothing (the file keeps its bytes, size and time), so
 * `undo` puts the state file back as it was (null: it cannot, a damaged one)
 * and the failure says nothing was written. Left pending, the state said
 * "partly written, run it again", which failed the same way, and a receive
 * refused every incremental after it.
 */
export async function growRecordedTarget(writer: BlockWriter, size: number, target: string, whose: string, job: string, undo: (() => Promise<unknown>) | null): Promise<void> {
  try {
    await writer.extend(size);
  } catch (e) {
    if (!isSystemError(e) || undo === null || !(await undo().then(() => true, () => false))) throw e;
    const x = e as NodeJS.ErrnoException;
    throw new SystemCallError(x.code ?? 'EIO', `cannot grow the target ${target} to ${size} bytes, ${whose} device size: ${whyCannotGrow(x)}; nothing was written and its ${job} state is as it was`, {
      syscall: x.syscall,
      path: target,
      cause: e,
    });
  }
}

/** Why a file target could not be grown to a device's size, for a person (EFBIG, ENOSPC/EDQUOT; else the system's words). */
export function whyCannotGrow(e: NodeJS.ErrnoException): string {
  if (e.code === 'EFBIG') return 'its filesystem does not take a file that large';
  if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return 'its filesystem has no room for it';
  return e.message;
}

/** Is this block device a dm thin volume without an external origin? Unknown = no. */
async function isPlainThin(dev: { major: number; minor: number }): Promise<boolean> {
  const name = await sysfs(dev, 'dm/name');
  if (!name) return false;
  try {
    // Loaded lazily: only receives onto dm devices need the dm ioctls.
    const { DeviceMapper } = require('../../dm/device-mapper') as typeof import('../../dm/device-mapper');
    const { parseThinTable, THIN_TARGET } = require('../../dm/targets/thin') as typeof import('../../dm/targets/thin');
    const t = await new DeviceMapper().table({ dev });
    return t.length === 1 && t[0].type === THIN_TARGET && parseThinTable(t[0].params).externalOriginDev === undefined;
  } catch {
    return false;
  }
}

export async function inspectTarget(path: string): Promise<TargetInfo> {
  let st;
  try {
    st = await stat(path);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') return { path, exists: false, blockDevice: false, thin: false, discardGranularity: 0 };
    throw new DmthinError(err.code ?? 'EIO', `${path}: ${err.message}`, { path, syscall: 'stat', cause: e });
  }
  if (st.isBlockDevice()) {
    const dev = await devNumOf(path);
    const max = Number((await sysfs(dev, 'queue/discard_max_bytes')) ?? 0);
    const gran = max > 0 ? Number((await sysfs(dev, 'queue/discard_granularity')) ?? 0) : 0;
    return { path, exists: true, blockDevice: true, dev, thin: await isPlainThin(dev), discardGranularity: gran };
  }
  if (!st.isFile()) throw new DmthinError('EINVAL', `${path} is not a regular file or block device`, { path });
  return { path, exists: true, blockDevice: false, fileSize: Number(st.size), thin: false, discardGranularity: 0 };
}

/** The method 'auto' stands for on this target. */
export function resolveZeroMethod(t: TargetInfo, m: ZeroMethod = 'auto'): Exclude<ZeroMethod, 'auto'> {
  if (m !== 'auto') return m;
  if (!t.blockDevice) return 'punch';
  return t.thin ? 'discard' : 'zeroout';
}

const FALLBACK = new Set(['EOPNOTSUPP', 'ENOTSUP', 'EINVAL', 'ENOTTY', 'ENOSYS']);

/** Largest read-back piece (bytes) when checking that a discard took. */
const READ_BACK_MAX = 4 * 1024 * 1024;

/**
 * A function making [offset, offset+length) read as zeros, counting how each
 * piece was done. Falls back to zeroing (for good) once discards are refused.
 * `close()` releases the read-back reader, if one was opened.
 */
export function zeroer(writer: BlockWriter, t: TargetInfo, method: Exclude<ZeroMethod, 'auto'>) {
  const used: Record<string, number> = {};
  let mode = method;
  // A promise: discards run several at once (applyStream), and two read-backs must not open two readers.
  let reader: Promise<BlockReader> | undefined;
  const note = (how: string): void => {
    used[how] = (used[how] ?? 0) + 1;
  };
  const zero = async (off: number, len: number): Promise<void> => {
    if (len > 0) note(await writer.zeroOut(off, len));
  };
  const g = t.discardGranularity > 0 ? t.discardGranularity : 512;
  // Whole granules [a, b) were just discarded: zero each one that does not read back as zeros.
  const checkDiscarded = async (a: number, b: number): Promise<void> => {
    const r = await (reader ??= BlockReader.open(t.path));
    const per = Math.max(1, Math.floor(READ_BACK_MAX / g)) * g;
    for (let off = a; off < b; off += per) {
      const len = Math.min(per, b - off);
      const blocks = Array.from({ length: len / 4096 }, (_, i) => off / 4096 + i);
      const data = (await r.read(4096, blocks, { errorFields: { syscall: 'read' } })).data;
      for (let k = 0; k < len; k += g) {
        const w = new Uint32Array(data.buffer, data.byteOffset + k, g / 4);
        if (w.some((x) => x !== 0)) {
          note('discard-not-honoured');
          await zero(off + k, g);
        }
      }
    }
  };
  const fn = async (off: number, len: number): Promise<void> => {
    if (len <= 0) return;
    if (mode === 'zeroout') return zero(off, len);
    if (mode === 'punch') {
      try {
        note(await writer.discard(off, len));
      } catch (e) {
        if (!FALLBACK.has((e as { code?: string }).code ?? '')) throw e;
        mode = 'zeroout';
        await zero(off, len);
      }
      return;
    }
    // discard: whole granules only, edges zeroed.
    const a = Math.ceil(off / g) * g;
    const b = Math.floor((off + len) / g) * g;
    if (b <= a) return zero(off, len);
    try {
      note(await writer.discard(a, b - a));
    } catch (e) {
      if (!FALLBACK.has((e as { code?: string }).code ?? '')) throw e;
      mode = 'zeroout';
      return zero(off, len);
    }
    if ((g & (g - 1)) !== 0 && g % 4096 === 0) await checkDiscarded(a, b);
    await zero(off, a - off);
    await zero(b, off + len - b);
  };
  /**
   * Several ranges (offset, length pairs, ascending and disjoint): punched
   * in one native call where holes are punched (a regular file), else one
   * range at a time as fn does. A call per range cost a thread trip each:
   * 400,000 one-block discards spent ~5 s of a ~10 s receive queueing them.
   */
  const many = async (ranges: Float64Array): Promise<void> => {
    if (mode !== 'punch') {
      // A call each (granules, read-back, zeroing), several at once; all ended before this returns.
      const running: Promise<void>[] = [];
      try {
        for (let i = 0; i < ranges.length; i += 2) {
          const p = fn(ranges[i], ranges[i + 1]);
          p.catch(() => undefined); // awaited in order below
          running.push(p);
          if (running.length >= 8) await running.shift();
        }
        for (const p of running.splice(0)) await p;
      } finally {
        await Promise.allSettled(running);
      }
      return;
    }
    try {
      const how = await writer.discardMany(ranges);
      used[how] = (used[how] ?? 0) + ranges.length / 2;
    } catch (e) {
      if (!FALLBACK.has((e as { code?: string }).code ?? '')) throw e;
      // Refused from the range its offset names on (those before it were punched): zeroed instead, for good.
      mode = 'zeroout';
      const at = (e as { offset?: number }).offset;
      let i = 0;
      while (i < ranges.length && ranges[i] !== at) i += 2;
      if (i >= ranges.length) i = 0; // no offset: zero them all (zeroing a punched range again is harmless)
      for (; i < ranges.length; i += 2) await zero(ranges[i], ranges[i + 1]);
    }
  };
  const close = (): void => {
    // Called once every discard has ended (applyStream waits for them): the open, if any, is done.
    reader?.then((r) => r.close(), () => undefined);
    reader = undefined;
  };
  return Object.assign(fn, { used, close, many });
}
