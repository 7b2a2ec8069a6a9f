/**
 * send(): one call from a snapshot to a stream.
 *
 * From a live pool: reserve the metadata snapshot, compute the extents to
 * send (the mappings, or the delta against the base) into an ExtentStore,
 * release the metadata snapshot — before the long part — then read the data
 * from the snapshot's own thin device: the one already active, or one
 * activated read-only under a temporary name and removed afterwards. The
 * temporary device is marked for deferred removal as soon as it is open, so
 * the kernel removes it when the descriptor closes, even if the process is
 * killed.
 *
 * From an offline image: the metadata file and either the pool's data
 * device image (`data`, addressed by data block) or an image of the thin
 * device itself (`device`, addressed by virtual block).
 *
 * The device size is never guessed: the metadata does not record it. It is
 * the active device's table length, the device image's size, or given; a
 * send that has none of these is refused before anything is read. On an
 * LVM-managed pool an inactive thin is never activated here (LVM would not
 * know of the device): the send is refused with the lvchange to run.
 */
import type { Writable } from 'node:stream';
import { DmthinError, UsageError, throwIfAborted, check } from '../errors';
// The pool, dm and output-file layers are loaded when a send uses them (a
// live pool, an -o file), not by an offline send to stdout: ~16 modules,
// part of its start-up (see sendFromPool and stream).
import type * as LiveMetadata from '../pool/live-metadata';
import type * as LiveThin from './live-thin';
import type { ThinPool } from '../pool/thin-pool';
import { ThinMetadata } from '../thin/metadata';
import { SECTOR_SIZE } from '../units';
import { NativeDataSource, type DataSource } from '../stream/send/data-source';
import type { ExtentStore as ExtentStoreT } from '../stream/send/extent-store';
import type * as OutputFileModule from '../output/file';
import { outputError } from '../output/sink';
import { FdWriter } from '../output/fd-writer';
import { planSend, type SendPlan } from '../stream/send/plan';
import { checkBatchBytes, encodeRecords, writeRecords, type SendProgress, type SendSummary } from '../stream/send/send-stream';

/** Progress of send. */
export interface SendProgressEvent extends SendProgress {
  /** 'metadata': walking mappings (dataBlocks counts blocks classified); 'data': streaming. */
  phase: 'metadata' | 'data';
}

interface CommonSendOptions {
  /** Thin device id of the snapshot. */
  snap: number;
  /** Thin device id of the base snapshot: an incremental stream. */
  base?: number;
  /** A Writable, or a file path (written through a temporary file renamed over it on success; never one of the inputs). */
  output: Writable | string;
  /**
   * The thin device's size in bytes. Default: an active device's table
   * length (live pool) or the device image's size (`device`); required for
   * an inactive device of a live pool and with `data`.
   */
  deviceSize?: number;
  /**
   * Pool identity recorded in the stream (default: the pool's dm uuid or
   * name; offline, the superblock uuid or a digest of the device's mapping
   * root, see offlinePoolId).
   */
  poolId?: string;
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Called as the work advances. */
  onProgress?: (p: SendProgressEvent) => void;
  /** Data bytes per read batch, at least one record (default 8 MiB into a file or stdout, 16 MiB into a Writable; a batch of scattered extents then closes at 2 MiB). */
  batchBytes?: number;
  /** Stream format version (default FORMAT_VERSION, 4; an older one for a receiver that reads only that, docs/stream-format.md). */
  formatVersion?: number;
}

/** send from a live pool: read through a metadata snapshot, data from the thin device. */
export interface PoolSendOptions extends CommonSendOptions {
  /** The pool, by dm name or as a ThinPool. */
  pool: string | ThinPool;
  /** Where the extent list is spilled when large (default TMPDIR). */
  tmpDir?: string;
}

/** send from metadata and data images or devices, without a live pool. */
export interface ImageSendOptions extends CommonSendOptions {
  /** Metadata device or image. */
  metadata: string;
  /** Read through the held metadata snapshot (true, or its block number). */
  metadataSnap?: boolean | number;
  /** The pool's data device (or an image of it): blocks are read at their data block. */
  data?: string;
  /** The snapshot's thin device (or an image of it): blocks are read at their virtual block. */
  device?: string;
}

/** Options of send: from a live pool, or from images. */
export type SendOptions = PoolSendOptions | ImageSendOptions;

/** Sends a snapshot (full, or incremental against `base`) to `output`. */
export async function send(opts: SendOptions): Promise<SendSummary> {
  check.required(opts, 'send');
  check.signal(opts.signal);
  check.callback(opts.onProgress, 'onProgress');
  if (opts.batchBytes !== undefined) checkBatchBytes(opts.batchBytes);
  const out: unknown = opts.output;
  if (typeof out !== 'string' && !(typeof out === 'object' && out !== null && typeof (out as Writable).write === 'function')) {
    throw new UsageError(`output must be a path or a Writable, got ${out === null ? 'null' : typeof out}`);
  }
  if (out === '') throw new UsageError('output must be a non-empty path or a Writable');
  return 'pool' in opts ? sendFromPool(opts) : sendFromImage(opts);
}

/**
 * Pipes the encoded plan into the output. A file output is written through a
 * temporary file renamed over it once complete and fsynced (output/file.ts):
 * a failed send leaves the path as it was. It must not name an input.
 */
async function stream(plan: SendPlan, source: DataSource, o: CommonSendOptions): Promise<SendSummary> {
  let summary: SendSummary | undefined;
  const outputFile = typeof o.output === 'string' ? (require('../output/file') as typeof OutputFileModule) : undefined;
  if (typeof o.output === 'string') {
    const i = o as Partial<ImageSendOptions>;
    await outputFile!.refuseOutputOverInputs(o.output, 'the stream output', [
      { path: i.metadata, role: 'the metadata input' },
      { path: i.data, role: 'the data input' },
      { path: i.device, role: 'the thin device input' },
    ]);
  }
  // The CLI's stdout is an FdWriter (output/fd-writer.ts: no process.stdout,
  // whose creation loads the stream modules); a library caller's may be
  // process.stdout. Tested in that order: reading process.stdout creates it.
  const toStdout = o.output instanceof FdWriter || (typeof o.output !== 'string' && o.output === process.stdout);
  // Written record by record, each write done before the next is encoded: the
  // send reads into three reused batch buffers instead of a new one a batch.
  // Only into outputs known to be done with a buffer once its write is (a
  // file, stdout); another Writable may keep the chunks it is given.
  const records = encodeRecords(plan, source, {
    signal: o.signal,
    batchBytes: o.batchBytes,
    formatVersion: o.formatVersion,
    onProgress: (p) => o.onProgress?.({ phase: 'data', ...p }),
    onEnd: (s) => (summary = s),
    reuseBuffers: typeof o.output === 'string' || toStdout,
  });
  if (typeof o.output !== 'string') {
    // The generator's errors are typed, a raw one is the Writable's. stdout is
    // never ended (that shuts a pipe down under Node, and the CLI's final flush
    // then got EPIPE: `dmthin send | cat` exited 141); another Writable is.
    const out = o.output;
    // The output's errors are named as its; the encoder's (a data source's or onProgress's own too) pass as they are.
    const asOutput = (e: unknown): unknown => outputError(e, toStdout ? 'stdout' : undefined);
    await writeRecords(records, out, o.signal, asOutput);
    if (!toStdout) await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => (e ? reject(asOutput(e)) : resolve())));
    return summary!;
  }
  const file = await outputFile!.OutputFile.create(o.output, { signal: o.signal });
  try {
    await writeRecords(records, file.stream, o.signal);
    await file.commit();
  } catch (e) {
    await file.discard();
    throw e;
  }
  return summary!;
}

/** The message and fields of a refusal for want of a device size. */
function sizeUnknown(why: string, devId: number, orActivate = false): UsageError {
  return new UsageError(
    `${why}: ${orActivate ? 'activate it, or ' : ''}give its size in bytes (option deviceSize; for an LVM volume, the LV size from \`lvs -o lv_size --units b VG/LV\`)`,
    { devId, option: 'deviceSize' },
  );
}

async function sendFromImage(o: ImageSendOptions): Promise<SendSummary> {
  if ((o.data === undefined) === (o.device === undefined)) throw new UsageError('give exactly one of data (the pool data device) or device (the thin device)');
  if (o.data !== undefined && o.deviceSize === undefined) {
    throw sizeUnknown(`the size of thin device ${o.snap} is not recorded in pool metadata, and a data device image does not tell it`, o.snap);
  }
  const md = await ThinMetadata.open(o.metadata, { metadataSnap: o.metadataSnap });
  try {
    const source = await NativeDataSource.open((o.data ?? o.device)!, { addressing: o.data !== undefined ? 'data' : 'virtual' });
    try {
      let deviceSize = o.deviceSize;
      if (o.device !== undefined) {
        const imageSize = source.sizeBytes - (source.sizeBytes % SECTOR_SIZE);
        if (deviceSize !== undefined && deviceSize > imageSize) {
          throw new UsageError(`the device size given (${deviceSize} bytes) is larger than the device image ${o.device} (${imageSize} bytes)`, { path: o.device });
        }
        // A thin device is whole sectors: an image that is not is no copy of
        // one, and its tail is not cut off unasked.
        if (deviceSize === undefined && imageSize !== source.sizeBytes) {
          throw new UsageError(
            `the device image ${o.device} is ${source.sizeBytes} bytes, not a whole number of 512-byte sectors: to send its first ${imageSize} bytes or fewer, give that size (option deviceSize)`,
            { path: o.device, option: 'deviceSize' },
          );
        }
        deviceSize ??= imageSize;
      }
      const plan = await planSend(md, {
        snap: o.snap,
        base: o.base,
        poolId: o.poolId,
        deviceSize: deviceSize!,
        addressing: source.addressing,
        signal: o.signal,
        onProgress: (p) => o.onProgress?.({ phase: 'metadata', dataBlocks: p.blocks, discardBlocks: 0, bytes: 0 }),
      });
      return await stream(plan, source, o);
    } finally {
      await source.close();
    }
  } finally {
    await md.close();
  }
}

async function sendFromPool(o: PoolSendOptions): Promise<SendSummary> {
  const { withMetadataSnapshot } = require('../pool/live-metadata') as typeof LiveMetadata;
  const { liveThin, withThinData } = require('./live-thin') as typeof LiveThin;
  const pool = typeof o.pool === 'string' ? await (require('../pool/thin-pool') as typeof import('../pool/thin-pool')).ThinPool.open(o.pool) : o.pool;
  const thin = await liveThin(pool, o.snap, {
    poolId: o.poolId,
    deviceSize: o.deviceSize,
    again: 'send',
    unknownSize: () => sizeUnknown(`thin device ${o.snap} of pool ${pool.name} is not active, so its size is unknown`, o.snap, true),
  });

  const { ExtentStore } = require('../stream/send/extent-store') as { ExtentStore: typeof ExtentStoreT };
  await using store = new ExtentStore({ tmpDir: o.tmpDir });
  // The metadata snapshot is held only for the walk, not for the data copy.
  const header = await withMetadataSnapshot(pool, async (md) => {
    const p = await planSend(md, {
      snap: o.snap,
      base: o.base,
      poolId: thin.poolId,
      deviceSize: thin.deviceSize,
      addressing: 'virtual',
      signal: o.signal,
      onProgress: (x) => o.onProgress?.({ phase: 'metadata', dataBlocks: x.blocks, discardBlocks: 0, bytes: 0 }),
    });
    for await (const e of p.extents) await store.add(e);
    await store.seal();
    return p.header;
  }, { signal: o.signal });
  throwIfAborted(o.signal);
  const plan: SendPlan = { header, extents: store, totalDataBlocks: store.totals.dataBlocks };
  return withThinData(pool, o.snap, thin, { prefix: 'dmthin-send', readNothing: thin.deviceSize === 0, nothing: emptySource }, (source) => stream(plan, source, o));
}

const emptySource: DataSource = {
  addressing: 'virtual',
  readBlocks: () => Promise.reject(new DmthinError('EIO', 'nothing to read from an empty device')),
};
