/**
 * What a send carries, from the metadata: the stream header (sizes and the
 * snapshot identities) and the ordered extents to send.
 *  - full stream: every mapped run of the snapshot as data, and every hole
 *    between them as zeros, so the target ends up equal to the snapshot
 *    whatever it held before;
 *  - incremental: the delta against the base: `different` and `right_only`
 *    as data, `left_only` (mapped in the base, not in the snapshot) as zeros.
 *    Blocks both map the same are skipped, and shared subtrees are not read.
 * Extents are clipped to the device size; mappings beyond it (unreachable
 * through a device of that length) are counted in `beyondEnd`.
 */
import { DmthinError, UsageError } from '../errors';
import type { DeviceDetails } from '../thin/device-details';
import type { ThinMetadata } from '../thin/metadata';
import type { DataAddressing } from './data-source';
import type { StreamHeaderInit } from './encoder';
import type { SendExtent } from './extent-store';
import { SECTOR_SIZE, type SnapshotIdentity } from './format';

export interface PlanOptions {
  /** Thin device id of the snapshot to send. */
  snap: number;
  /** Thin device id of the base snapshot (incremental stream); absent = full stream. */
  base?: number;
  /** Identity of the pool, recorded in the stream (dm uuid or name, or a label for an image). */
  poolId: string;
  /**
   * Device size in bytes (a multiple of 512). Default: the end of the
   * snapshot's highest mapped block, which costs one walk of its mappings.
   */
  deviceSize?: number;
  /** How the data source is addressed (decides each data extent's `source`). */
  addressing: DataAddressing;
  signal?: AbortSignal;
  /** Virtual blocks classified so far by the metadata walk. */
  onProgress?: (p: { blocks: number }) => void;
}

export interface SendPlan {
  header: StreamHeaderInit;
  extents: AsyncIterable<SendExtent>;
  /** Known once the extents were collected (ExtentStore), else undefined. */
  totalDataBlocks?: number;
  /** Mapped blocks past the device size (not sent). Final once `extents` is consumed. */
  readonly beyondEnd: { blocks: number };
}

export function identityOf(poolId: string, d: DeviceDetails): SnapshotIdentity {
  return { pool: poolId, devId: d.devId, creationTime: d.creationTime, transactionId: d.transactionId };
}

async function details(md: ThinMetadata, devId: number, what: string, signal?: AbortSignal): Promise<DeviceDetails> {
  if (!Number.isSafeInteger(devId) || devId < 0) throw new UsageError(`bad ${what} device id ${devId}`);
  const d = (await md.devices({ signal })).get(devId);
  if (!d) {
    const where = md.metadataSnap !== null ? ` (metadata snapshot at block ${md.metadataSnap})` : '';
    throw new DmthinError('ENODEV', `no thin device ${devId} (${what}) in the metadata${where}`, { devId });
  }
  return d;
}

/** End (in bytes) of the highest mapped block of a device: one walk of its mappings. */
export async function mappedEnd(md: ThinMetadata, devId: number, signal?: AbortSignal): Promise<number> {
  const blockBytes = md.superblock.dataBlockSize * SECTOR_SIZE;
  let end = 0;
  for await (const b of md.mappingBatches(devId, { signal })) {
    const last = b.count - 1;
    const o = b.origin(last);
    const e = typeof o === 'bigint' ? Infinity : (o + b.length[last]) * blockBytes;
    if (!Number.isSafeInteger(e)) {
      throw new UsageError(`device ${devId} maps blocks beyond 2^53 bytes: give the device size explicitly`, { devId });
    }
    end = e;
  }
  return end;
}

export async function planSend(md: ThinMetadata, o: PlanOptions): Promise<SendPlan> {
  const snap = await details(md, o.snap, 'snapshot', o.signal);
  const base = o.base === undefined ? undefined : await details(md, o.base, 'base', o.signal);
  if (base && base.devId === snap.devId) throw new UsageError('the base and the snapshot are the same device');
  const dataBlockSize = md.superblock.dataBlockSize;
  const blockBytes = dataBlockSize * SECTOR_SIZE;
  let deviceSize = o.deviceSize;
  if (deviceSize === undefined) deviceSize = await mappedEnd(md, o.snap, o.signal);
  if (!Number.isSafeInteger(deviceSize) || deviceSize < 0 || deviceSize % SECTOR_SIZE !== 0) {
    throw new UsageError(`device size ${deviceSize} is not a whole number of 512-byte sectors`);
  }
  const nBlocks = Math.ceil(deviceSize / blockBytes);
  const beyondEnd = { blocks: 0 };
  const extents = base ? deltaExtents(md, base.devId, snap.devId, nBlocks, o, beyondEnd) : fullExtents(md, snap.devId, nBlocks, o, beyondEnd);
  return {
    header: { dataBlockSize, deviceSize, target: identityOf(o.poolId, snap), base: base ? identityOf(o.poolId, base) : null },
    extents,
    beyondEnd,
  };
}

async function* fullExtents(md: ThinMetadata, devId: number, nBlocks: number, o: PlanOptions, beyond: { blocks: number }): AsyncGenerator<SendExtent> {
  let next = 0;
  let seen = 0;
  for await (const b of md.mappingBatches(devId, { signal: o.signal })) {
    for (let i = 0; i < b.count; i++) {
      const origin = b.origin(i);
      const length = b.length[i];
      seen += length;
      if (typeof origin === 'bigint' || origin >= nBlocks) {
        beyond.blocks += length;
        continue;
      }
      const len = Math.min(length, nBlocks - origin);
      beyond.blocks += length - len;
      if (origin > next) yield { kind: 'zero', begin: next, length: origin - next, source: 0 };
      yield { kind: 'data', begin: origin, length: len, source: o.addressing === 'virtual' ? origin : b.dataBegin[i] };
      next = origin + len;
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
  o: PlanOptions,
  beyond: { blocks: number },
): AsyncGenerator<SendExtent> {
  let seen = 0;
  let batchNo = 0;
  for await (const e of md.delta(baseId, snapId, { includeSame: false, signal: o.signal })) {
    seen += e.length;
    if ((++batchNo & 1023) === 0) o.onProgress?.({ blocks: seen });
    if (e.kind === 'same') continue;
    if (typeof e.begin === 'bigint' || e.begin >= nBlocks) {
      if (e.kind !== 'left_only') beyond.blocks += e.length;
      continue;
    }
    const len = Math.min(e.length, nBlocks - e.begin);
    if (e.kind === 'left_only') {
      yield { kind: 'zero', begin: e.begin, length: len, source: 0 };
    } else {
      beyond.blocks += e.length - len;
      yield { kind: 'data', begin: e.begin, length: len, source: o.addressing === 'virtual' ? e.begin : e.rightData! };
    }
  }
  o.onProgress?.({ blocks: seen });
}
