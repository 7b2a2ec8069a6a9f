/**
 * Applying a verified stream to the target: a second pass over the same
 * bytes, with a fresh verifier (so a file that changed since the first pass
 * is caught record by record, and at the end by the keyed GMAC the first
 * pass computed over the same bytes, or its SHA-256 without one). Data records are
 * copied into one of two batch buffers, each written with one native call,
 * one batch in flight while the next is filled; discard records go to the
 * zeroer. The input chunks and the verifier's buffer are reused as soon as a
 * record is copied, so memory is those buffers whatever the stream's size.
 * Records never overlap (the verifier enforces ascending order), so the
 * order in which writes and discards complete does not matter: several
 * discards run at once, beside the batch being written.
 */
import { StreamError, throwIfAborted } from '../../errors';
import type { BlockWriter, WriteSegment } from '../../native/block-writer';
import { alignedBuffer } from '../../native/binding';
import { RecordBuffers, StreamVerifier, type VerifiedStream } from '../format/verifier';

/**
 * Discard records gathered into one call of the zeroer's many(), and
 * such calls in flight at once: two keep the JS thread and a thread punching
 * busy together. More threads at once only cost memory: 16 calls of 256 (all
 * four threads busy) peaked 16 MiB higher for 400,000 discards (52.9 against
 * 37.6 MiB anonymous), no faster. Receive of those 400,000 (farm-bench, 3
 * runs each, loaded host): 64 a call, 2 in flight 4.45 s, peak 78.9 MiB; 256
 * and 2: 5.34 s, 81.5 MiB; 256 and 1: 6.50 s, 80.5; 1,024 and 1: 4.01 s, 80.4.
 */
const DISCARDS_PER_CALL = 64;
const GATHERED_IN_FLIGHT = 2;

export interface ApplyProgress {
  /** Stream bytes applied so far. */
  bytes: number;
  totalBytes: number;
}

export interface ApplyOptions {
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Called as the work advances. */
  onProgress?: (p: ApplyProgress) => void;
  /** Data bytes per native write call (default 1 MiB); two such buffers are used. */
  batchBytes?: number;
  /** The verifier's buffers (shared with the verify pass before). */
  buffers?: RecordBuffers;
  /**
   * Runs once, right before the first write or zeroing (e.g. to record the
   * target as being written): a refusal found before it leaves everything as
   * it was.
   */
  beforeWrite?: () => Promise<void>;
}

export interface ApplyStats {
  dataBytes: number;
  dataRecords: number;
  discardRecords: number;
  /** Native write calls. */
  writeCalls: number;
}

/**
 * The input again: an iterable, or a function that makes one and is given
 * `beforeReuse` for fileChunks (the chunks are then hashed in place, held
 * until the digest has passed them).
 */
export type ApplyChunks = AsyncIterable<Buffer> | ((beforeReuse: (end: number) => Promise<void>) => AsyncIterable<Buffer>);

/** Makes ranges read as zeros: one, or several at once as offset, length pairs (target.ts zeroer). */
export type Zeroer = ((offset: number, length: number) => Promise<void>) & { many: (ranges: Float64Array) => Promise<void> };

export async function applyStream(
  input: ApplyChunks,
  expected: VerifiedStream,
  writer: BlockWriter,
  zero: Zeroer,
  opts: ApplyOptions = {},
): Promise<ApplyStats> {
  const held = typeof input === 'function';
  // Data comes in pieces straight from the input chunks: no record assembled, one copy (into the batch).
  const v = new StreamVerifier({ reuseBuffers: opts.buffers ?? true, holdChunks: held, recheck: expected, dataPieces: 'emit' });
  const chunks = held ? input((end) => v.hashedThrough(end)) : input;
  const stats: ApplyStats = { dataBytes: 0, dataRecords: 0, discardRecords: 0, writeCalls: 0 };
  const max = Math.max(opts.batchBytes ?? 1 << 20, 4096);
  const bufs: Buffer[] = [];
  let turn = 0;
  let batch: WriteSegment[] = [];
  let batchBytes = 0;
  let inflight: Promise<unknown> = Promise.resolve();
  let started = false;
  let lastDataSeq = -1;
  // Discard ranges gathered for zero.many (offset, length pairs), and its calls in flight, oldest first.
  const discards = new Float64Array(2 * DISCARDS_PER_CALL);
  let nDiscards = 0;
  const zeroing: Promise<void>[] = [];
  const zeroGathered = async (): Promise<void> => {
    if (nDiscards === 0) return;
    const ranges = discards.slice(0, nDiscards);
    nDiscards = 0;
    while (zeroing.length >= GATHERED_IN_FLIGHT) await zeroing.shift();
    const z = zero.many(ranges);
    z.catch(() => undefined); // awaited in order, or all at the end
    zeroing.push(z);
  };
  const begin = async (): Promise<void> => {
    if (started) return;
    started = true;
    await opts.beforeWrite?.();
  };

  const flush = async (): Promise<void> => {
    if (batch.length === 0) return;
    const b = batch;
    batch = [];
    batchBytes = 0;
    await begin();
    await inflight;
    inflight = writer.write(b);
    inflight.catch(() => undefined); // awaited before the next write and at the end
    turn ^= 1; // the other buffer's write was awaited above
    stats.writeCalls++;
  };

  try {
    for await (const chunk of chunks) {
      throwIfAborted(opts.signal);
      await v.ready(chunk.length); // the digest runs on its own thread, at most its ring behind
      for (const r of v.records(chunk)) {
        if (r.type === 'header') {
          if (r.header.deviceSize !== expected.header.deviceSize) throw new StreamError('changed', 'the input changed after it was verified');
        } else if (r.type === 'data') {
          // r.data is a view into a reused buffer: copied (in pieces as the batches fill) before the next record is parsed.
          const n = r.data.length;
          for (let off = 0; off < n; ) {
            if (batchBytes === max) await flush();
            // 4096-aligned: an O_DIRECT target is written from it in place (BlockWriter bounces unaligned buffers).
            const buf = (bufs[turn] ??= alignedBuffer(max));
            const k = Math.min(n - off, max - batchBytes);
            r.data.copy(buf, batchBytes, off, off + k);
            // A piece that continues the last segment on the device (records come in pieces) extends it:
            // segments stay whole runs, so an O_DIRECT target is written from the batch in place.
            const last = batch[batch.length - 1];
            if (last && last.offset + last.data.length === r.start + off) {
              batch[batch.length - 1] = { offset: last.offset, data: buf.subarray(batchBytes - last.data.length, batchBytes + k) };
            } else {
              batch.push({ offset: r.start + off, data: buf.subarray(batchBytes, batchBytes + k) });
            }
            batchBytes += k;
            off += k;
          }
          stats.dataBytes += n;
          if (r.seq !== lastDataSeq) stats.dataRecords++; // a record comes in pieces
          lastDataSeq = r.seq;
        } else if (r.type === 'discard') {
          await begin();
          // Gathered (a call per range is a thread trip each), and calls in flight beside the
          // rest: one at a time the JS thread waited out every one (100,000 one-block discards: ~5 s of ~9).
          discards[nDiscards++] = r.start;
          discards[nDiscards++] = r.length;
          if (nDiscards === discards.length) await zeroGathered();
          stats.discardRecords++;
        }
      }
      opts.onProgress?.({ bytes: v.position, totalBytes: expected.bytes });
    }
    await flush();
    await zeroGathered();
    await inflight;
    for (const z of zeroing.splice(0)) await z;
    throwIfAborted(opts.signal);
  } catch (e) {
    await inflight.catch(() => undefined);
    await Promise.allSettled(zeroing); // nothing left running on the target once this returns
    if (e instanceof StreamError && e.reason !== 'changed') {
      throw new StreamError('changed', `the input changed after it was verified: ${e.message}`, { offset: e.offset, record: e.record, cause: e });
    }
    throw e;
  }
  let got;
  try {
    got = v.finish();
  } catch (e) {
    throw new StreamError('changed', `the input changed after it was verified: ${(e as Error).message}`, { cause: e });
  }
  if (got.digest !== expected.digest) throw new StreamError('changed', 'the input changed after it was verified (digest)');
  return stats;
}
