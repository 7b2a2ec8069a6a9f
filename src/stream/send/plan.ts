/**
 * What a send carries, from the metadata: the stream header (sizes and the
 * snapshot identities) and the ordered extents to send.
 *  - full stream: every mapped run of the snapshot as data, and every hole
 *    between them as zeros, so the target ends up equal to the snapshot
 *    whatever it held before;
 *  - incremental: the delta against the base: `different` and `right_only`
 *    as data, `left_only` (mapped in the base, not in the snapshot) as zeros.
 *    Blocks both map the same are skipped, and shared subtrees are not read.
 * The device size is always given (the metadata does not record it). A
 * change outside it is an error, never skipped: a receiver would otherwise
 * keep stale data there and report success.
 */
import { DmthinError, StreamError, throwIfAborted, UsageError, check } from '../../errors';
import type { DeviceDetails } from '../../thin/device-details';
import { ThinMetadata } from '../../thin/metadata';
import type { DataAddressing } from './data-source';
import type { StreamHeaderInit } from '../format/encoder';
import type { SendExtent } from './extent-store';
import { type SnapshotIdentity } from '../format/records';
import { SECTOR_SIZE } from '../../units';
import { sha256Of } from '../../native/binding';

export interface PlanOptions {
  /** Thin device id of the snapshot to send. */
  snap: number;
  /** Thin device id of the base snapshot (incremental stream); absent = full stream. */
  base?: number;
  /**
   * Identity of the pool, recorded in the stream (dm uuid or name of a live
   * pool). Default: the offline identity of each device (offlinePoolId).
   */
  poolId?: string;
  /** Device size in bytes (a multiple of 512): the thin device's real size. */
  deviceSize: number;
  /** How the data source is addressed (decides each data extent's `source`). */
  addressing: DataAddressing;
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Virtual blocks classified so far by the metadata walk. */
  onProgress?: (p: { blocks: number }) => void;
}

export interface SendPlan {
  /** The header (planSend fills in the mapping-root digests; an encoder of version 1-3 leaves them out). */
  header: StreamHeaderInit;
  extents: AsyncIterable<SendExtent>;
  /** Known once the extents were collected (ExtentStore), else undefined. */
  totalDataBlocks?: number;
}

export function identityOf(poolId: string, d: DeviceDetails): SnapshotIdentity {
  return { pool: poolId, devId: d.devId, creationTime: d.creationTime, transactionId: d.transactionId };
}

async function details(md: ThinMetadata, devId: number, what: string, signal?: AbortSignal): Promise<DeviceDetails> {
  check.devId(devId, `the ${what} device id`);
  throwIfAborted(signal);
  const d = await md.deviceDetails(devId);
  if (!d) {
    const where = md.metadataSnap !== null ? ` (metadata snapshot at block ${md.metadataSnap})` : '';
    throw new DmthinError('ENODEV', `no thin device ${devId} (${what}) in the metadata${where}`, { devId });
  }
  return d;
}

/** Refusal of an empty pool identity (send and backup). */
export const EMPTY_POOL_ID = 'the pool identity (poolId, --pool-id) is empty: give the text to record, or leave it out for the default (dm uuid or name; offline, derived from the metadata)';

/**
 * The pool part of an offline snapshot identity (docs/stream-format.md §3):
 * `sb-uuid:<hex>` when the superblock carries a uuid; else
 * `image-sha256:<hex>`, a digest of the data block size and the bytes of the
 * device's mapping-tree root node. That node stays where it is, unchanged,
 * for as long as the device is not written (writes to an origin shadow the
 * origin's path, never the snapshot's), so the same snapshot gives the same
 * identity in a full send now and as the base of an incremental later; its
 * bytes hold the device's mappings (or its children's block numbers) and
 * checksum, so another pool's device — whatever its file is called — gives
 * another one. A device whose mappings changed since (a write provisioned
 * or a discard unmapped a block) gets a new identity: an incremental
 * against it would not start from what the receiver holds. An overwrite of
 * a block the device alone maps changes no metadata and keeps the identity.
 */
export async function offlinePoolId(md: ThinMetadata, devId: number, signal?: AbortSignal): Promise<string> {
  check.instance(md, ThinMetadata, 'metadata');
  check.integer(devId, 'devId', 0);
  check.signal(signal);
  const uuid = md.superblock.uuid;
  if (uuid.some((b) => b !== 0)) return `sb-uuid:${uuid.toString('hex')}`;
  const node = await rootNode(md, devId, signal);
  const fixed = Buffer.alloc(4);
  fixed.writeUInt32LE(md.superblock.dataBlockSize, 0);
  return `image-sha256:${sha256Of([Buffer.from('dmthin offline identity 1\0', 'latin1'), fixed, node]).toString('hex')}`;
}

/**
 * A digest of thin `devId`'s mapping-tree root node as stored (SHA-256,
 * hex). The node keeps its block and bytes while the device's mappings do
 * not change (see offlinePoolId); a write that provisions a block the device
 * shares or does not map, and a discard, change it. An overwrite of a block
 * the device alone maps changes no metadata, so no digest of metadata sees it.
 */
export async function mappingRootDigest(md: ThinMetadata, devId: number, signal?: AbortSignal): Promise<string> {
  return sha256Of([Buffer.from('dmthin mapping root 1\0', 'latin1'), await rootNode(md, devId, signal)]).toString('hex');
}

/** The bytes of thin `devId`'s mapping-tree root node as stored. */
async function rootNode(md: ThinMetadata, devId: number, signal?: AbortSignal): Promise<Uint8Array> {
  throwIfAborted(signal);
  const root = await md.mappingRoot(devId); // ENODEV when it has none
  const [node] = await md.io.read([root]);
  return node.data;
}

function beyond(devId: number, kind: string, block: number | bigint, deviceSize: number, nBlocks: number, extra = ''): StreamError {
  return new StreamError(
    'beyond-size',
    `device ${devId} ${kind} virtual block ${block}${extra}, outside the device size of ${deviceSize} bytes (${nBlocks} blocks): ` +
      'the size given is smaller than the device, or the device maps blocks past its end; give the real size of the device',
    { devId, block: typeof block === 'bigint' ? undefined : block, virtualBlock: String(block), deviceSize },
  );
}

export async function planSend(md: ThinMetadata, o: PlanOptions): Promise<SendPlan> {
  // Recorded as UTF-8 in the stream: two ids that differ only in lone surrogates would become one.
  check.wellFormed(o.poolId, 'poolId');
  if (o.poolId === '') throw new UsageError(EMPTY_POOL_ID);
  const snap = await details(md, o.snap, 'snapshot', o.signal);
  const base = o.base === undefined ? undefined : await details(md, o.base, 'base', o.signal);
  if (base && base.devId === snap.devId) throw new UsageError('the base and the snapshot are the same device');
  const dataBlockSize = md.superblock.dataBlockSize;
  const blockBytes = dataBlockSize * SECTOR_SIZE;
  const deviceSize = o.deviceSize;
  if (!Number.isSafeInteger(deviceSize) || deviceSize < 0 || deviceSize % SECTOR_SIZE !== 0) {
    throw new UsageError(`device size ${deviceSize} is not a whole number of 512-byte sectors`);
  }
  const nBlocks = Math.ceil(deviceSize / blockBytes);
  const snapPool = o.poolId ?? (await offlinePoolId(md, snap.devId, o.signal));
  const basePool = base ? (o.poolId ?? (await offlinePoolId(md, base.devId, o.signal))) : undefined;
  const targetRoot = await mappingRootDigest(md, snap.devId, o.signal);
  const baseRoot = base ? await mappingRootDigest(md, base.devId, o.signal) : undefined;
  const extents = base ? deltaExtents(md, base.devId, snap.devId, nBlocks, deviceSize, o) : fullExtents(md, snap.devId, nBlocks, deviceSize, o);
  return {
    header: { dataBlockSize, deviceSize, target: identityOf(snapPool, snap), base: base ? identityOf(basePool!, base) : null, targetRoot, ...(baseRoot ? { baseRoot } : {}) },
    extents,
  };
}

async function* fullExtents(md: ThinMetadata, devId: number, nBlocks: number, deviceSize: number, o: PlanOptions): AsyncGenerator<SendExtent> {
  let next = 0;
  let seen = 0;
  for await (const b of md.mappingBatches(devId, { signal: o.signal })) {
    for (let i = 0; i < b.count; i++) {
      const origin = b.origin(i);
      const length = b.length[i];
      seen += length;
      if (typeof origin === 'bigint' || origin + length > nBlocks) {
        const first = typeof origin === 'bigint' ? origin : Math.max(origin, nBlocks);
        throw beyond(devId, 'maps', first, deviceSize, nBlocks);
      }
      if (origin > next) yield { kind: 'zero', begin: next, length: origin - next, source: 0 };
      yield { kind: 'data', begin: origin, length, source: o.addressing === 'virtual' ? origin : b.dataBegin[i] };
      next = origin + length;
    }
    o.onProgress?.({ blocks: seen });
  }
  if (next < nBlocks) yield { kind: 'zero', begin: next, length: nBlocks - next, source: 0 };
}

async function* deltaExtents(
  md: ThinMetadata,
  baseId: number,
  snapId: number,
  nBlocks: number,
  deviceSize: number,
  o: PlanOptions,
): AsyncGenerator<SendExtent> {
  let seen = 0;
  let batchNo = 0;
  // The raw batches keep virtual blocks below 2^53 as numbers (no BigInt per extent).
  for await (const batch of md.deltaExtentBatches(baseId, snapId, { includeSame: false, signal: o.signal })) for (const e of batch) {
    seen += e.length;
    if ((++batchNo & 1023) === 0) o.onProgress?.({ blocks: seen });
    if (e.kind === 'same') continue;
    if (typeof e.begin === 'bigint' || e.begin + e.length > nBlocks) {
      // Skipping it would leave the receiver's copy stale there (left_only) or short of data.
      const first = typeof e.begin === 'bigint' ? e.begin : Math.max(e.begin, nBlocks);
      if (e.kind === 'left_only') throw beyond(baseId, 'maps', first, deviceSize, nBlocks, ` (unmapped in snapshot ${snapId}: a change to send as a discard)`);
      throw beyond(snapId, e.kind === 'different' ? 'remaps' : 'maps', first, deviceSize, nBlocks, ` (a change against base ${baseId})`);
    }
    if (e.kind === 'left_only') {
      yield { kind: 'zero', begin: e.begin, length: e.length, source: 0 };
    } else {
      yield { kind: 'data', begin: e.begin, length: e.length, source: o.addressing === 'virtual' ? e.begin : e.rightData! };
    }
  }
  o.onProgress?.({ blocks: seen });
}
