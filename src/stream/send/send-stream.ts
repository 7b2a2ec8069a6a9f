/**
 * The sending side: extents in, stream bytes out, as a Node Readable.
 *
 * Data extents are cut into records of at most 8 MiB; records are grouped
 * into read batches (16 MiB of data by default) that are read from the data
 * source in one sorted, coalesced call. One batch is read ahead while the
 * previous one is being consumed, and nothing more: the Readable pulls, so a
 * slow consumer stops the reads (backpressure) and memory stays at two
 * batches.
 */
// node:stream only for the Readable API (toReadable): the CLI's send writes
// through writeRecords and loads none of it (~3.5 ms of start-up).
import type { Readable, Writable } from 'node:stream';
import { AbortError, check, throwIfAborted, UsageError } from '../../errors';
import { ThinMetadata } from '../../thin/metadata';
import { MAX_READ_BYTES, readBlocksExactly, type DataSource } from './data-source';
import { StreamEncoder } from '../format/encoder';
import { MAX_DATA_BYTES } from '../format/records';
import { SECTOR_SIZE } from '../../units';
import { planSend, type SendPlan } from './plan';

/** Progress of a send stream. */
export interface SendProgress {
  /** Blocks sent as data so far. */
  dataBlocks: number;
  /** Of how many, when known. */
  totalDataBlocks?: number;
  /** Blocks sent as discards so far. */
  discardBlocks: number;
  /** Stream bytes produced so far. */
  bytes: number;
}

export interface EncodeOptions {
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Called as the work advances. */
  onProgress?: (p: SendProgress) => void;
  /** Data bytes read from the source per batch, at least one record (default 16 MiB, 8 MiB with reused buffers; a batch of scattered pieces then closes at 2 MiB). */
  batchBytes?: number;
  /** Summary once the end record has been produced. */
  onEnd?: (s: SendSummary) => void;
  /**
   * Read batches into a few buffers reused for the whole stream (when the
   * source can: readRanges). Only for a consumer that is done with every
   * yielded buffer (written it) before it asks for the next one, as
   * writeRecords() is; a Readable reads ahead, so encodeStream never sets it.
   */
  reuseBuffers?: boolean;
  /**
   * Stream format version to write (default FORMAT_VERSION, 4). Version 1
   * (one SHA-256 over the stream, on one core) is for receivers that read
   * only it; the records are the same.
   */
  formatVersion?: number;
}

/** Batch buffers reused with reuseBuffers: one filled, one read ahead, one being hashed or written. */
const REUSED_BATCHES = 3;
/** Default batch with reused buffers: one 8 MiB record (three of them are the send's data memory). */
const REUSED_BATCH_BYTES = 8 << 20;

/** What a send produced. */
export interface SendSummary {
  /** The stream's digest (hex; docs/stream-format.md §6) before the end record, as the receiver records it. */
  digest: string;
  /** Records in the stream. */
  records: number;
  /** Blocks sent as data. */
  dataBlocks: number;
  /** Blocks sent as discards. */
  discardBlocks: number;
  /** Data bytes sent. */
  dataBytes: number;
  /** Whole stream, end record included. */
  bytes: number;
}

type Item =
  | { kind: 'data'; block: number; offsetSectors: number; src: number; len: number }
  | { kind: 'discard'; block: number; count: number };

interface Batch {
  items: Item[];
  bytes: number;
  read?: Promise<Buffer>;
  /** Its buffer in the reused set. */
  slot?: number;
}

const MAX_ITEMS = 4096;
/**
 * A batch of several pieces (scattered extents) closes at 2 MiB: read with
 * one call, several preads in flight. Each reused batch buffer is touched to
 * the size of the batches it holds: at 8 MiB a send of 8,192 scattered
 * one-block extents peaked at 96 MiB (70 at 2 MiB, 81 at 4 MiB), no faster.
 */
const SCATTERED_BATCH_BYTES = 2 << 20;

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** Reads a batch's data pieces with one call, in the largest unit that divides them all. */
function readBatch(source: DataSource, b: Batch): Promise<Buffer> {
  const pieces = b.items.filter((i): i is Extract<Item, { kind: 'data' }> => i.kind === 'data');
  if (pieces.length === 0) return Promise.resolve(Buffer.alloc(0));
  let unit = 0;
  for (const p of pieces) unit = gcd(gcd(unit, p.src), p.len);
  unit = gcd(unit, MAX_READ_BYTES); // the native reader's largest block
  const blocks: number[] = [];
  for (const p of pieces) for (let u = p.src / unit, n = p.len / unit; n > 0; n--) blocks.push(u++);
  return readBlocksExactly(source, unit, blocks);
}

/** @internal batchBytes: a whole number of bytes, at most 1 GiB (a larger one failed inside the addon with a plain RangeError). */
export function checkBatchBytes(v: unknown): void {
  check.integer(v, 'batchBytes');
  if ((v as number) > MAX_READ_BYTES) throw new UsageError(`batchBytes must be at most ${MAX_READ_BYTES} (1 GiB), got ${v as number}`, { option: 'batchBytes' });
}

/**
 * The stream's bytes for a plan, reading data from `source`: each item the
 * buffers of one or more records, in order, to be written together (one
 * step of the generator a record, not one a buffer: each step through the
 * generators below costs promises and closures, and a send of 20,000
 * one-block extents took 1.2x the time with a step a buffer).
 */
export async function* encodeRecords(plan: SendPlan, source: DataSource, opts: EncodeOptions = {}): AsyncGenerator<Buffer[]> {
  const enc = new StreamEncoder(opts.formatVersion === undefined ? plan.header : { ...plan.header, version: opts.formatVersion });
  const { deviceSize } = enc.header;
  const bs = enc.blockBytes;
  // Whole blocks per record when blocks are small; 8 MiB pieces of a block otherwise.
  const pieceMax = bs <= MAX_DATA_BYTES ? Math.floor(MAX_DATA_BYTES / bs) * bs : MAX_DATA_BYTES;
  const reuse = opts.reuseBuffers === true && source.readRanges !== undefined && source.allocBuffer !== undefined;
  const batchMax = Math.max(opts.batchBytes ?? (reuse ? REUSED_BATCH_BYTES : 16 << 20), pieceMax);
  // Where a batch of several pieces closes (batchBytes, when given); one piece alone may fill batchMax.
  const batchCap = opts.batchBytes !== undefined ? batchMax : Math.min(batchMax, SCATTERED_BATCH_BYTES);
  // Reused buffers, and the stream position after the batch each last held: hashed in place up to there before reuse.
  const slots: Buffer[] = [];
  const slotEnds: number[] = [];
  let batchNo = 0;
  const readInto = async (b: Batch, slot: number): Promise<Buffer> => {
    if (slotEnds[slot] !== undefined) await enc.hashedThrough(slotEnds[slot]);
    const buf = (slots[slot] ??= source.allocBuffer!(batchMax));
    const ranges = [];
    let at = 0;
    for (const it of b.items) {
      if (it.kind !== 'data') continue;
      ranges.push({ at, offset: it.src, length: it.len });
      at += it.len;
    }
    await source.readRanges!(buf, ranges);
    return buf.subarray(0, at);
  };
  const progress = (): void =>
    opts.onProgress?.({ dataBlocks: enc.counts.dataBlocks, totalDataBlocks: plan.totalDataBlocks, discardBlocks: enc.counts.discardBlocks, bytes: enc.counts.streamBytes });

  const queue: Batch[] = [];
  let cur: Batch = { items: [], bytes: 0 };

  const seal = (): void => {
    if (cur.items.length === 0) return;
    // The slot's previous batch was yielded two batches ago: its consumer is done with it.
    if (reuse && cur.bytes > 0) cur.slot = batchNo++ % REUSED_BATCHES;
    cur.read = cur.slot !== undefined ? readInto(cur, cur.slot) : readBatch(source, cur);
    cur.read.catch(() => undefined); // awaited in order below; do not report it unhandled meanwhile
    queue.push(cur);
    cur = { items: [], bytes: 0 };
  };

  async function* drain(keep: number): AsyncGenerator<Buffer[]> {
    while (queue.length > keep) {
      const b = queue.shift()!;
      const data = await b.read!;
      throwIfAborted(opts.signal);
      let at = 0;
      for (const it of b.items) {
        if (it.kind === 'data') {
          await enc.ready(it.len); // the digest runs behind on its own thread; no more than its ring behind
          // Hashed in place: the batch is this read's own buffer, or a reused one refilled only once hashed.
          yield enc.data(it.block, it.offsetSectors, data.subarray(at, at + it.len), true);
          at += it.len;
        } else {
          yield enc.discard(it.block, it.count);
        }
      }
      if (b.slot !== undefined) slotEnds[b.slot] = enc.counts.streamBytes;
      progress();
    }
  }

  try {
    yield* gatherSmall(encodeAll(), opts.reuseBuffers === true);
  } finally {
    enc.abort(); // no-op once finished; otherwise the digest thread would hash on for nothing
  }

  async function* encodeAll(): AsyncGenerator<Buffer[]> {
    throwIfAborted(opts.signal);
    yield enc.start();
    for await (const e of plan.extents) {
      throwIfAborted(opts.signal);
      if (e.kind === 'zero') {
        cur.items.push({ kind: 'discard', block: e.begin, count: e.length });
      } else {
        const end = Math.min((e.begin + e.length) * bs, deviceSize);
        for (let off = e.begin * bs; off < end; ) {
          const len = Math.min(pieceMax, end - off);
          // A piece that does not fit goes in the next batch. (The test was
          // "another piece of the largest size might not fit", always true
          // where that size is the batch's: every extent was a batch and a
          // read of its own: 8,192 one-block extents took 1.4x the time.)
          if (cur.bytes > 0 && cur.bytes + len > batchCap) {
            seal();
            yield* drain(1); // one batch reads ahead while this one is consumed
          }
          const block = Math.floor(off / bs);
          const inBlock = off - block * bs;
          cur.items.push({ kind: 'data', block, offsetSectors: inBlock / SECTOR_SIZE, src: e.source * bs + (off - e.begin * bs), len });
          cur.bytes += len;
          off += len;
          if (cur.bytes >= batchCap || cur.items.length >= MAX_ITEMS) {
            seal(); // full: its read starts now
            yield* drain(1);
          }
        }
      }
      if (cur.items.length >= MAX_ITEMS) {
        seal();
        yield* drain(1);
      }
    }
    seal();
    yield* drain(0);
    await enc.ready(Infinity); // the digest has caught up: finish() does not wait on the JS thread
    const { parts, end } = enc.finish();
    yield parts;
    progress();
    opts.onEnd?.({
      digest: end.sha256.toString('hex'),
      records: end.records,
      dataBlocks: end.dataBlocks,
      discardBlocks: end.discardBlocks,
      dataBytes: end.dataBytes,
      bytes: end.streamBytes + parts.reduce((n, p) => n + p.length, 0),
    });
  }
}

/** Small buffers (headers, discards, data prefixes) are gathered into pieces of at most this many bytes. */
const GATHER_BYTES = 64 << 10;

/**
 * The records of `gen` (each item a record's buffers), small buffers
 * gathered: each was written on its own, so a stream of 100,000 discard
 * records (40 bytes each) took 100,000 writes, ~3.5 s of a 5 s send. A
 * buffer above 4 KiB (a data record's payload, hashed and maybe reused in
 * place) passes as it is, after what was gathered before it; each item
 * yielded is what a record (or several) put out, in order. A gathered piece
 * is a buffer of its own (a Readable keeps what it is given), unless
 * `reuse`: the consumer is done with each item before it asks for the next
 * (writeRecords), and one buffer serves them all, nothing gathered into it
 * while an item not yet written holds a piece of it. (A fresh 64 KiB buffer
 * per piece is memory outside the JS heap that only a collection frees: a
 * send of 400,000 discard records peaked at 91 MiB.)
 */
async function* gatherSmall(gen: AsyncGenerator<Buffer[]>, reuse: boolean): AsyncGenerator<Buffer[]> {
  let stage: Buffer | undefined;
  let n = 0;
  let out: Buffer[] | undefined;
  let holdsStage = false;
  const cut = (): void => {
    (out ??= []).push(stage!.subarray(0, n));
    if (reuse) holdsStage = true;
    else stage = undefined;
    n = 0;
  };
  for await (const parts of gen) {
    for (const b of parts) {
      if (b.length > GATHER_BYTES >>> 4) {
        if (n > 0) cut();
        (out ??= []).push(b);
        continue;
      }
      if (stage !== undefined && n + b.length > stage.length) cut();
      if (holdsStage) {
        yield out!;
        out = undefined;
        holdsStage = false;
      }
      stage ??= Buffer.allocUnsafe(GATHER_BYTES);
      stage.set(b, n);
      n += b.length;
    }
    if (out !== undefined) {
      yield out;
      out = undefined;
      holdsStage = false;
    }
  }
  if (n > 0) yield [stage!.subarray(0, n)];
}

/**
 * Writes a generator's buffers to `out` (an item is a buffer or several,
 * written in order), each item's writes finished before the next item is
 * asked for (what reuseBuffers needs). `out` is not
 * ended. The output's errors are thrown through `outputError` (the caller
 * names the output); the generator's own (the encoder's, a data source's, a
 * caller's onProgress) as they are.
 */
export async function writeRecords(gen: AsyncIterable<Buffer | Buffer[]>, out: Writable, signal?: AbortSignal, outputError: (e: unknown) => unknown = (e) => e): Promise<void> {
  let failed: unknown;
  const onError = (e: unknown): void => {
    failed ??= e;
  };
  // The wait of the item being written, ended by its last write's callback, an
  // abort or the output's close. The listeners are the stream's, not an item's:
  // a send of 20,000 records made and dropped them 20,000 times.
  let resolveItem: (() => void) | undefined;
  let rejectItem: ((e: unknown) => void) | undefined;
  const endItem = (e?: unknown, ok = false): void => {
    const resolve = resolveItem;
    const reject = rejectItem;
    resolveItem = rejectItem = undefined;
    if (ok) resolve?.();
    else reject?.(e);
  };
  // A reader that stops reading must not hold an abort up.
  const onAbort = (): void => endItem(new AbortError(undefined, { cause: signal!.reason }));
  // An output destroyed under a write (a PassThrough whose reader failed)
  // may never call that write back: its close ends the wait. Without it
  // the send waited on nothing and an in-process replicate ended with 0.
  const closed = (): unknown => {
    const e = failed ?? Object.assign(new Error('the output was closed before the stream was written'), { code: 'EPIPE', syscall: 'write' });
    failed ??= e;
    return outputError(e);
  };
  const onClose = (): void => {
    if (rejectItem) endItem(closed());
  };
  // An item's buffers are written back to back, their callbacks called in order: the first failure is the one reported.
  let itemError: Error | null | undefined;
  const noteError = (e?: Error | null): void => void (itemError ??= e);
  out.on('error', onError);
  out.on('close', onClose);
  signal?.addEventListener('abort', onAbort);
  try {
    for await (const item of gen) {
      const bufs = Array.isArray(item) ? item : [item];
      if (bufs.length === 0) continue;
      if (signal?.aborted) throw new AbortError(undefined, { cause: signal.reason });
      if (out.destroyed) throw closed();
      itemError = undefined;
      await new Promise<void>((resolve, reject) => {
        resolveItem = resolve;
        rejectItem = reject;
        // Corked: an output that can (the CLI's stdout, a send's file) writes them with one writev(2).
        const cork = bufs.length > 1 && typeof out.cork === 'function';
        if (cork) out.cork();
        for (let i = 0; i < bufs.length - 1; i++) out.write(bufs[i], noteError);
        out.write(bufs[bufs.length - 1], (last) => {
          const e = itemError ?? last;
          if (e) failed ??= e;
          // Not an item an abort or a close has ended already.
          if (rejectItem === reject) endItem(e ? outputError(e) : undefined, !e);
        });
        if (cork) out.uncork();
      });
      if (failed) throw outputError(failed);
    }
  } finally {
    resolveItem = rejectItem = undefined;
    signal?.removeEventListener('abort', onAbort);
    out.off('close', onClose);
    // A failed write's 'error' event comes a tick after its callback: keep the listener then, or it is unhandled.
    if (!failed) out.off('error', onError);
  }
}

/**
 * A byte Readable over a generator; an abort destroys it (which stops the
 * generator). Not Readable.from: its destroy waits for the generator's
 * return(), which a generator waiting on a read that never comes (a stalled
 * DataSource) never gives, so an abort emitted neither 'error' nor 'close'
 * and the consumer waited for ever (outside hunt V). Here destroy settles at
 * once; the generator is still asked to return, and does when its read ends.
 */
function toReadable(gen: AsyncGenerator<Buffer[]>, signal?: AbortSignal): Readable {
  let pulling = false;
  const pull = async (): Promise<void> => {
    pulling = true;
    try {
      for (;;) {
        const { value, done } = await gen.next();
        if (r.destroyed) return;
        if (done) {
          r.push(null);
          return;
        }
        let more = true;
        for (const b of value) more = r.push(b);
        if (!more) return; // read() asks again
      }
    } catch (e) {
      r.destroy(e as Error);
    } finally {
      pulling = false;
    }
  };
  const r: Readable = new (require('node:stream') as typeof import('node:stream')).Readable({
    highWaterMark: 1 << 20,
    read() {
      if (!pulling) void pull();
    },
    destroy(err, cb) {
      gen.return(undefined).catch(() => undefined);
      cb(err);
    },
  });
  if (signal) {
    const onAbort = (): void => {
      r.destroy(new AbortError(undefined, { cause: signal.reason }));
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    r.once('close', () => signal.removeEventListener('abort', onAbort));
  }
  return r;
}

/** A Readable of the stream for a plan. Destroying it stops the reads. */
export function encodeStream(plan: SendPlan, source: DataSource, opts: EncodeOptions = {}): Readable {
  return toReadable(encodeRecords(plan, source, opts), opts.signal);
}

/** Options of sendStream. */
export interface SendStreamOptions extends EncodeOptions {
  /** Metadata to read the mappings from (a file, or a pool's metadata snapshot: it must stay held until the stream ends). */
  metadata: ThinMetadata;
  /** Thin device id of the snapshot. */
  snap: number;
  /** Thin device id of the base snapshot: an incremental stream. */
  base?: number;
  /** Where the blocks' contents come from. */
  source: DataSource;
  /** Pool identity recorded in the stream (default: the offline identity, see offlinePoolId). */
  poolId?: string;
  /**
   * The thin device's size in bytes. Default: the size of `source` when it
   * is the device itself (virtual addressing with a known size); otherwise
   * it must be given (the metadata does not record device sizes).
   */
  deviceSize?: number;
}

/**
 * The stream of one snapshot (full) or of its changes since `base`
 * (incremental), walking the metadata as the stream is consumed.
 */
export function sendStream(opts: SendStreamOptions): Readable {
  // Checked now, not when the stream is first read: the caller's mistake is thrown here, not emitted as an 'error'.
  check.required(opts, 'sendStream');
  check.instance(opts.metadata, ThinMetadata, 'metadata');
  check.methods(opts.source, 'source', 'a DataSource', ['readBlocks']);
  check.oneOf(opts.source.addressing, 'source.addressing', ['virtual', 'data']);
  check.signal(opts.signal);
  check.callback(opts.onProgress, 'onProgress');
  if (opts.batchBytes !== undefined) checkBatchBytes(opts.batchBytes);
  async function* gen(): AsyncGenerator<Buffer[]> {
    let deviceSize = opts.deviceSize;
    const src = opts.source as DataSource & { sizeBytes?: number };
    if (deviceSize === undefined && src.addressing === 'virtual' && typeof src.sizeBytes === 'number') deviceSize = src.sizeBytes - (src.sizeBytes % SECTOR_SIZE);
    if (deviceSize === undefined) {
      throw new UsageError(`the size of thin device ${opts.snap} is not in the pool metadata: give its size in bytes (option deviceSize)`, { devId: opts.snap, option: 'deviceSize' });
    }
    const plan = await planSend(opts.metadata, {
      snap: opts.snap,
      base: opts.base,
      poolId: opts.poolId,
      deviceSize,
      addressing: opts.source.addressing,
      signal: opts.signal,
    });
    yield* encodeRecords(plan, opts.source, opts);
  }
  return toReadable(gen(), opts.signal);
}
