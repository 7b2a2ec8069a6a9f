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
  // Straight from the batch's u32 words: this runs once per device, 70,000 times in a big pool.
  const w = leaf.u32;
  const at = leaf.base + ((leaf.valuesOffset + DEVICE_DETAILS_SIZE * i) >>> 2);
  const mappedHi = w[at + 1];
  if (mappedHi >= MAX_SAFE_HI) {
    throw new MetadataError('data-range', `device ${leaf.key(i)}: mapped_blocks exceeds 2^53`, { block: leaf.nr, tree: 'details' });
  }
  const txHi = w[at + 3];
  return {
    devId: leaf.key(i),
    mappedBlocks: w[at] + mappedHi * TWO32,
    transactionId: txHi === 0 ? BigInt(w[at + 2]) : (BigInt(txHi) << 32n) | BigInt(w[at + 2]),
    creationTime: w[at + 4],
    snapshottedTime: w[at + 5],
  };
}
