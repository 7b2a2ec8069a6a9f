/**
 * Compression and decompression of chunks on worker threads (codec.ts's
 * asynchronous forms use them). Node's own asynchronous zlib calls build a
 * zlib stream per call and hop to the thread pool once per 16 KiB of output,
 * and the pool's threads then compete with the JS thread and each other; a
 * worker here runs the synchronous call, one task at a time (effect:
 * docs/repository.md, "Where a backup's time goes").
 *
 * Workers run node's zlib and crypto only: envelopes, keys and policy stay in
 * codec.ts. Their source is this file's string (no module of ours is loaded
 * in a worker), so it runs the same from dist/ and under the test runner.
 * They start once a process has (de)compressed INLINE_BYTES, one per core
 * up to four, and never keep the process alive when idle. Before that, work
 * runs on the calling thread, synchronously: a small incremental backup or
 * restore does not pay the workers' start and memory.
 *
 * Memory: a task's input and output live in a SharedArrayBuffer slab that is
 * reused for the next task (the input copied in, the result read in place),
 * not in buffers transferred each way: those came back to the JS thread
 * faster than its garbage collector, whose heap here is small, reclaimed
 * them (1 GiB backup: peak RSS 134 -> 172 MiB before the slabs). Free slabs
 * are kept up to RETAIN_BYTES.
 */
import type { Worker as WorkerType } from 'node:worker_threads';

/**
 * Decompresses `data` (code 1: deflate raw, 2: brotli) into at most
 * `maxOutputLength` bytes, and refuses bytes after the end of the compressed
 * stream, which zlib and brotli stop at and ignore (random bytes pass as an
 * empty brotli stream 4% of the time): they are damage too. The workers'
 * source does the same in plain JavaScript.
 */
export function decompressWhole(z: typeof import('node:zlib'), code: 1 | 2, data: Uint8Array, maxOutputLength: number, chunkSize?: number): Buffer {
  // `info` (the engine beside the result) is missing from @types/node's options.
  const opts = { maxOutputLength, info: true, ...(chunkSize === undefined ? {} : { chunkSize }) } as object;
  const r = (code === 1 ? z.inflateRawSync(data, opts) : z.brotliDecompressSync(data, opts)) as unknown as { buffer: Buffer; engine: { bytesWritten: number } };
  if (r.engine.bytesWritten !== data.length) {
    throw Object.assign(new Error(`the compressed stream ends after ${r.engine.bytesWritten} of its ${data.length} bytes; the rest is not part of it`), { code: 'Z_DATA_ERROR' });
  }
  return r.buffer;
}

/** @internal The workers' source (tests start many at once). */
export const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const zlib = require('node:zlib');
const { createHash, createHmac } = require('node:crypto');
const Q = zlib.constants.BROTLI_PARAM_QUALITY, HINT = zlib.constants.BROTLI_PARAM_SIZE_HINT;
// zlib's output buffers die young but the worker's heap barely grows, so its collector ran seldom and
// each worker's malloc arena held tens of MiB of them; a scavenge every 4 MiB of output frees them
// (1 GiB backup: peak RSS -26 MiB). gc is reachable only through a new context once the flag is set.
// V8's flags are the process's: the flag is cleared again at once, or the main thread's code cache,
// written at exit, would carry it and be refused (and written again) by every later run. The workers
// start together: set, take and clear is done under one lock of them all, or one worker's clear could
// come between another's set and take (gc is not defined, and that worker gone).
const lock = new Int32Array(workerData.flagLock);
while (Atomics.compareExchange(lock, 0, 0, 1) !== 0) Atomics.wait(lock, 0, 1, 100);
let scavenge;
try {
  require('node:v8').setFlagsFromString('--expose-gc');
  scavenge = require('node:vm').runInNewContext('gc');
} finally {
  require('node:v8').setFlagsFromString('--no-expose-gc');
  Atomics.store(lock, 0, 0);
  Atomics.notify(lock, 0, 1);
}
let sinceGc = 0;

parentPort.on('message', (t) => {
  const slab = Buffer.from(t.slab);
  const data = slab.subarray(0, t.inLen);
  let out = null, id, error;
  try {
    if (t.op === 'compress') {
      // One output buffer for the whole result: chunkSize a little above the input.
      const chunkSize = Math.max(64, Math.min(data.length + 1024, 64 << 20));
      out = t.algorithm === 1 ? zlib.deflateRawSync(data, { level: t.level, chunkSize })
        : zlib.brotliCompressSync(data, { chunkSize, params: { [Q]: t.level, [HINT]: data.length } });
    } else {
      const chunkSize = Math.max(64, Math.min(t.outCap || 65536, t.max));
      // As decompressWhole() below (this source cannot import it).
      const r = t.code === 1 ? zlib.inflateRawSync(data, { maxOutputLength: t.max, chunkSize, info: true })
        : zlib.brotliDecompressSync(data, { maxOutputLength: t.max, chunkSize, info: true });
      if (r.engine.bytesWritten !== data.length) {
        throw Object.assign(new Error('the compressed stream ends after ' + r.engine.bytesWritten + ' of its ' + data.length + ' bytes; the rest is not part of it'), { code: 'Z_DATA_ERROR' });
      }
      out = r.buffer;
      if (t.idKey !== undefined) id = (t.idKey ? createHmac('sha256', t.idKey) : createHash('sha256')).update(out).digest('hex');
    }
  } catch (e) {
    error = { message: String((e && e.message) || e), code: e && e.code };
  }
  if (error !== undefined) return parentPort.postMessage({ seq: t.seq, error });
  if ((sinceGc += out.buffer.byteLength) > 4 << 20) {
    sinceGc = 0;
    scavenge({ type: 'minor' });
  }
  if (out.length <= t.outCap) {
    slab.set(out, t.inCap);
    return parentPort.postMessage({ seq: t.seq, outLen: out.length, id });
  }
  // Larger than its place in the slab (incompressible data, a larger chunk than hinted): sent apart.
  const own = out.byteOffset === 0 && out.byteLength === out.buffer.byteLength && out.length >= 8192 ? out : new Uint8Array(out);
  parentPort.postMessage({ seq: t.seq, out: own, id }, [own.buffer]);
});
`;

const MAX_WORKERS = 4;
/** Bytes (de)compressed without workers before they start (a 1% incremental backup of 1 GiB stays under it). */
const INLINE_BYTES = 16 << 20;
/** Free slabs kept for reuse, in bytes (more in flight at once are dropped after use). */
const RETAIN_BYTES = 16 << 20;
const SLAB_UNIT = 64 << 10;

interface WireError {
  message: string;
  code?: string;
}

/** A task's answer: the result in the slab (outLen) or apart (out). */
interface Reply {
  seq: number;
  outLen?: number;
  out?: Uint8Array;
  id?: string;
  error?: WireError;
}

interface Slot {
  worker: WorkerType;
  busy: number;
}

interface Pending {
  resolve(r: Reply): void;
  reject(e: Error): void;
  slot: Slot;
}

/** A task failed (zlib's reason and code), in a worker or before the workers started. */
export class WorkerTaskError extends Error {
  declare code?: string;

  constructor(e: WireError) {
    super(e.message);
    if (e.code !== undefined) this.code = e.code;
  }
}

let slots: Slot[] | undefined;
let inlineLeft = INLINE_BYTES;
let seq = 0;
const pending = new Map<number, Pending>();
const freeSlabs: SharedArrayBuffer[] = [];
let retained = 0;

function takeSlab(bytes: number): SharedArrayBuffer {
  for (let i = 0; i < freeSlabs.length; i++) {
    const s = freeSlabs[i]!;
    if (s.byteLength >= bytes) {
      freeSlabs.splice(i, 1);
      retained -= s.byteLength;
      return s;
    }
  }
  return new SharedArrayBuffer(Math.ceil(bytes / SLAB_UNIT) * SLAB_UNIT);
}

function giveSlab(s: SharedArrayBuffer): void {
  if (retained + s.byteLength > RETAIN_BYTES) return;
  freeSlabs.push(s);
  retained += s.byteLength;
}

function start(): Slot[] {
  const { Worker } = require('node:worker_threads') as typeof import('node:worker_threads');
  const { availableParallelism } = require('node:os') as typeof import('node:os');
  const n = Math.max(1, Math.min(MAX_WORKERS, availableParallelism()));
  const made: Slot[] = [];
  // The workers' lock around V8's --expose-gc (see WORKER_SOURCE).
  const flagLock = new SharedArrayBuffer(4);
  for (let i = 0; i < n; i++) {
    const worker = new Worker(WORKER_SOURCE, { eval: true, stdout: false, stderr: false, workerData: { flagLock } });
    const slot: Slot = { worker, busy: 0 };
    worker.on('message', (r: Reply) => {
      const p = pending.get(r.seq);
      if (!p) return;
      pending.delete(r.seq);
      if (--slot.busy === 0) worker.unref();
      p.resolve(r);
    });
    // A worker that dies (out of memory, killed) fails what it held; the next task starts a new set.
    const fail = (why: string) => {
      if (slots === made) slots = undefined;
      for (const [k, p] of pending)
        if (p.slot === slot) {
          pending.delete(k);
          p.reject(new Error(`a compression worker thread stopped (${why}); run the command again`));
        }
    };
    worker.on('error', (e) => fail(e.message));
    worker.on('exit', (code) => fail(`exit code ${code}`));
    // After the listeners: adding a 'message' listener refs the worker's port again.
    worker.unref();
    made.push(slot);
  }
  return made;
}

/**
 * Whether a task of `n` bytes runs without the workers: only before they
 * started and while the budget lasts (then they start and stay).
 */
function inline(n: number): boolean {
  if (slots || n > inlineLeft) {
    inlineLeft = 0;
    return false;
  }
  inlineLeft -= n;
  return true;
}

/**
 * Sets how many bytes are still (de)compressed before the workers start
 * (tests: 0 to use the workers at once, Infinity never).
 * @internal
 */
export function setInlineBudget(bytes: number): void {
  inlineLeft = bytes;
}

/**
 * Whether the worker threads have started.
 * @internal
 */
export function workersStarted(): boolean {
  return slots !== undefined;
}

type Zlib = typeof import('node:zlib');
let zlibModule: Zlib | undefined;

/**
 * A task on this thread, synchronously (the bytes the workers make): for
 * 64 KiB chunks a fraction of a millisecond each, and no zlib stream or
 * thread-pool hop per call (Node's asynchronous zlib took twice the CPU).
 */
function runInline(task: { op: 'compress'; algorithm: 1 | 2; level: number } | { op: 'decompress'; code: 1 | 2; max: number; idKey?: Buffer | null }, data: Uint8Array): Promise<{ out: Buffer; id?: string }> {
  const z = (zlibModule ??= require('node:zlib') as Zlib);
  let out: Buffer;
  try {
    if (task.op === 'compress') {
      out =
        task.algorithm === 1
          ? z.deflateRawSync(data, { level: task.level })
          : z.brotliCompressSync(data, { params: { [z.constants.BROTLI_PARAM_QUALITY]: task.level, [z.constants.BROTLI_PARAM_SIZE_HINT]: data.length } });
    } else {
      out = decompressWhole(z, task.code, data, task.max);
    }
  } catch (e) {
    return Promise.reject(new WorkerTaskError({ message: (e as Error).message, code: (e as NodeJS.ErrnoException).code }));
  }
  if (task.op === 'compress' || task.idKey === undefined) return Promise.resolve({ out });
  const { createHash, createHmac } = require('node:crypto') as typeof import('node:crypto');
  return Promise.resolve({ out, id: (task.idKey ? createHmac('sha256', task.idKey) : createHash('sha256')).update(out).digest('hex') });
}

/**
 * Runs a task on `data` with room for `outCap` bytes of result in its slab;
 * `use` gets the result, valid only during the call (the slab is reused
 * after it).
 */
async function run<T>(task: Record<string, unknown>, data: Uint8Array, outCap: number, use: (out: Uint8Array, id: string | undefined) => T): Promise<T> {
  const all = (slots ??= start());
  let slot = all[0]!;
  for (const s of all) if (s.busy < slot.busy) slot = s;
  const inCap = Math.ceil(data.length / 64) * 64;
  const slab = takeSlab(inCap + outCap);
  let reusable = true;
  try {
    // The caller's memory stays the caller's: the worker reads a copy in the slab.
    new Uint8Array(slab, 0, data.length).set(data);
    const k = seq++;
    const r = await new Promise<Reply>((resolve, reject) => {
      pending.set(k, { resolve, reject, slot });
      if (slot.busy++ === 0) slot.worker.ref();
      slot.worker.postMessage({ ...task, seq: k, slab, inLen: data.length, inCap, outCap });
    });
    if (r.error !== undefined) throw new WorkerTaskError(r.error);
    return use(r.out ?? new Uint8Array(slab, inCap, r.outLen!), r.id);
  } catch (e) {
    // A worker that stopped mid-task may still hold the slab: never reuse it.
    if (!(e instanceof WorkerTaskError)) reusable = false;
    throw e;
  } finally {
    if (reusable) giveSlab(slab);
  }
}

/**
 * `data` compressed with deflate (algorithm 1, raw) or brotli (2) at
 * `level` (the bytes Node's zlib makes on this thread), handed to `use`;
 * the view is valid only during `use`.
 */
export function compressInWorker<T>(algorithm: 1 | 2, level: number, data: Uint8Array, use: (z: Uint8Array) => T): Promise<T> {
  if (inline(data.length)) return runInline({ op: 'compress', algorithm, level }, data).then((r) => use(r.out));
  return run({ op: 'compress', algorithm, level }, data, data.length + 1024, (out) => use(out));
}

/**
 * `data` decompressed (code 1 deflate raw, 2 brotli), at most `max` bytes,
 * into a Buffer of its own; `hint` is the size expected. With `idKey` (null:
 * SHA-256, else the HMAC-SHA-256 key) the result's chunk id comes with it,
 * hashed in the worker.
 */
export function decompressInWorker(code: 1 | 2, data: Uint8Array, max: number, hint?: number, idKey?: Buffer | null): Promise<{ out: Buffer; id?: string }> {
  // Counted by the compressed size: the plaintext is not known yet.
  if (inline(data.length)) return runInline({ op: 'decompress', code, max, idKey }, data);
  return run({ op: 'decompress', code, max, idKey }, data, Math.min(hint ?? SLAB_UNIT, max), (out, id) => ({ out: Buffer.from(out), id }));
}
