/**
 * Applying a verified stream to the target: a second pass over the same
 * bytes, with a fresh verifier (so a file that changed since the first pass
 * is caught record by record, and by its digest at the end). Data records are
 * gathered into batches written with one native call each, one batch in
 * flight while the next is parsed; discard records go to the zeroer.
 * Records never overlap (the verifier enforces ascending order), so the
 * order in which writes and discards complete does not matter.
 */
import { StreamError, throwIfAborted } from '../../errors';
import type { BlockWriter, WriteSegment } from '../../native/block-writer';
import { StreamVerifier, type VerifiedStream } from '../format/verifier';

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
  /** Data bytes per native write call (default 32 MiB). */
  batchBytes?: number;
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

export async function applyStream(
  chunks: AsyncIterable<Buffer>,
  expected: VerifiedStream,
  writer: BlockWriter,
  zero: (offset: number, length: number) => Promise<void>,
  opts: ApplyOptions = {},
): Promise<ApplyStats> {
  const v = new StreamVerifier();
  const stats: ApplyStats = { dataBytes: 0, dataRecords: 0, discardRecords: 0, writeCalls: 0 };
  const max = opts.batchBytes ?? 32 << 20;
  let batch: WriteSegment[] = [];
  let batchBytes = 0;
  let inflight: Promise<unknown> = Promise.resolve();
  let started = false;
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
    stats.writeCalls++;
  };

  try {
    for await (const chunk of chunks) {
      throwIfAborted(opts.signal);
      for (const r of v.push(chunk)) {
        if (r.type === 'header') {
          if (r.header.deviceSize !== expected.header.deviceSize) throw new StreamError('changed', 'the input changed after it was verified');
        } else if (r.type === 'data') {
          batch.push({ offset: r.start, data: r.data });
          batchBytes += r.data.length;
          stats.dataBytes += r.data.length;
          stats.dataRecords++;
          if (batchBytes >= max) await flush();
        } else if (r.type === 'discard') {
          await begin();
          await zero(r.start, r.length);
          stats.discardRecords++;
        }
      }
      opts.onProgress?.({ bytes: v.position, totalBytes: expected.bytes });
    }
    await flush();
    await inflight;
    throwIfAborted(opts.signal);
  } catch (e) {
    await inflight.catch(() => undefined);
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
