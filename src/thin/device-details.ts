/** The device details tree: one 24-byte record per thin device. */
import { MetadataError } from '../errors';
import type { BtreeNode } from '../pdata/btree';
import { MAX_SAFE_HI, TWO32 } from '../pdata/words';

export const DEVICE_DETAILS_SIZE = 24;

/** A thin device's entry in the details tree. */
export interface DeviceDetails {
  /** The thin device id. */
  devId: number;
  /** Mapped virtual blocks, maintained by the kernel (as of the last commit). */
  mappedBlocks: number;
  /** Pool transaction id when the device was created. */
  transactionId: bigint;
  /** Superblock time at creation. */
  creationTime: number;
  /** Time of the last snapshot of (or, for a snapshot, creating) this device. */
  snapshottedTime: number;
}

export function parseDeviceDetails(leaf: BtreeNode, i: number): DeviceDetails {
  const off = leaf.valuesOffset + DEVICE_DETAILS_SIZE * i;
  const d = leaf.data;
  const mappedHi = d.readUInt32LE(off + 4);
  if (mappedHi >= MAX_SAFE_HI) {
    throw new MetadataError('data-range', `device ${leaf.key(i)}: mapped_blocks exceeds 2^53`, { block: leaf.nr, tree: 'details' });
  }
  return {
    devId: leaf.key(i),
    mappedBlocks: d.readUInt32LE(off) + mappedHi * TWO32,
    transactionId: d.readBigUInt64LE(off + 8),
    creationTime: d.readUInt32LE(off + 16),
    snapshottedTime: d.readUInt32LE(off + 20),
  };
}
