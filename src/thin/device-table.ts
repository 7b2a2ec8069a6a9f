/**
 * Every thin device of a metadata view as columns, one row per device in id
 * order: the details tree's fields and the root of the device's mapping tree.
 *
 * Typed arrays, no object per device: a pool of 70,000 devices held its
 * devices in Maps of objects (with a bigint each) three times over (details,
 * roots, and the checked copy), ~30 MB of live heap that made `dump` of such
 * a pool peak near 100 MiB; the table is 40 bytes a device. It also spent
 * most of `ls`'s time making and collecting those objects.
 */
import { MetadataError } from '../errors';
import { walkLeaves } from '../pdata/btree';
import type { BlockSource } from '../pdata/block-source';
import { MAX_SAFE_HI, TWO32 } from '../pdata/words';
import { DEVICE_DETAILS_SIZE, parseDeviceDetails, type DeviceDetails } from './device-details';

export interface DeviceTable {
  /** Number of devices (rows). */
  count: number;
  /** Device ids, strictly increasing. */
  devId: Float64Array;
  mappedBlocks: Float64Array;
  /** transaction_id as two u32 halves (a bigint only when a row is made: deviceAt). */
  transactionLo: Uint32Array;
  transactionHi: Uint32Array;
  creationTime: Uint32Array;
  snapshottedTime: Uint32Array;
  /** Root block of each device's mapping tree. */
  root: Uint32Array;
}

/** Where the two trees are and how large the metadata device is. */
export interface DeviceTableSource {
  io: BlockSource;
  detailsRoot: number;
  mappingRoot: number;
  nrMetadataBlocks: number;
}

/** Typed arrays that grow by doubling, trimmed views at the end. */
export function grow<T extends Float64Array | Uint32Array>(a: T, n: number): T {
  if (n <= a.length) return a;
  const b = new (a.constructor as new (n: number) => T)(Math.max(n, a.length * 2));
  b.set(a);
  return b;
}

/**
 * Reads the details tree and the top-level mapping tree (both walks at once,
 * their reads overlapping; errors in a fixed order, the details tree's
 * first) and checks that they name the same devices: both are in key order,
 * so one merge of their keys does it. A device in one and not the other is a
 * `device-mismatch` MetadataError (the lowest such id; one only in the
 * details first), a mapping root beyond the metadata device `block-range`,
 * a key or mapped_blocks beyond 2^53 as parseDeviceDetails refuses it.
 */
export async function readDeviceTable(src: DeviceTableSource, signal?: AbortSignal): Promise<DeviceTable> {
  // Wide read windows: these trees are read whole, and fewer round trips count on a busy disk.
  const walk = { nrMetadataBlocks: src.nrMetadataBlocks, signal, window: 1024 };
  // The leaves are decoded straight from their u32 words (little-endian
  // pairs for u64s), one plain loop per leaf: 70,000 entries are decoded
  // before V8 optimises much, so the work per entry is what counts.
  const readDetails = async (): Promise<Omit<DeviceTable, 'root'>> => {
    let n = 0;
    let devId = new Float64Array(1024);
    let mapped = new Float64Array(1024);
    let txLo = new Uint32Array(1024);
    let txHi = new Uint32Array(1024);
    let ctime = new Uint32Array(1024);
    let stime = new Uint32Array(1024);
    for await (const leaf of walkLeaves(src.io, src.detailsRoot, { ...walk, tree: 'details', valueSize: DEVICE_DETAILS_SIZE })) {
      const w = leaf.u32;
      const keys = leaf.base + 8;
      const m = leaf.nrEntries;
      devId = grow(devId, n + m);
      mapped = grow(mapped, n + m);
      txLo = grow(txLo, n + m);
      txHi = grow(txHi, n + m);
      ctime = grow(ctime, n + m);
      stime = grow(stime, n + m);
      let at = leaf.base + (leaf.valuesOffset >>> 2);
      for (let i = 0; i < m; i++, n++, at += DEVICE_DETAILS_SIZE >>> 2) {
        // Keys and mapped_blocks above 2^53 are refused as parseDeviceDetails refuses them.
        if (w[keys + 2 * i + 1] !== 0 || w[at + 1] >= MAX_SAFE_HI) parseDeviceDetails(leaf, i);
        const keyHi = w[keys + 2 * i + 1];
        devId[n] = keyHi === 0 ? w[keys + 2 * i] : w[keys + 2 * i] + keyHi * TWO32;
        const hi = w[at + 1];
        mapped[n] = hi === 0 ? w[at] : w[at] + hi * TWO32;
        txLo[n] = w[at + 2];
        txHi[n] = w[at + 3];
        ctime[n] = w[at + 4];
        stime[n] = w[at + 5];
      }
    }
    return {
      count: n,
      devId: devId.subarray(0, n),
      mappedBlocks: mapped.subarray(0, n),
      transactionLo: txLo.subarray(0, n),
      transactionHi: txHi.subarray(0, n),
      creationTime: ctime.subarray(0, n),
      snapshottedTime: stime.subarray(0, n),
    };
  };
  const readRoots = async (): Promise<{ ids: Float64Array; roots: Uint32Array }> => {
    let n = 0;
    let ids = new Float64Array(1024);
    let roots = new Uint32Array(1024);
    for await (const leaf of walkLeaves(src.io, src.mappingRoot, { ...walk, tree: 'mapping-top', valueSize: 8 })) {
      const w = leaf.u32;
      const keys = leaf.base + 8;
      const values = leaf.base + (leaf.valuesOffset >>> 2);
      ids = grow(ids, n + leaf.nrEntries);
      roots = grow(roots, n + leaf.nrEntries);
      for (let i = 0; i < leaf.nrEntries; i++, n++) {
        if (w[values + 2 * i + 1] !== 0 || w[values + 2 * i] >= src.nrMetadataBlocks) {
          const root = leaf.value64(i); // throws first for a root beyond 2^53
          throw new MetadataError('block-range', `device ${leaf.key(i)}: mapping root ${root} is beyond the metadata device`, {
            block: leaf.nr,
            devId: leaf.key(i),
            tree: 'mapping-top',
          });
        }
        const keyHi = w[keys + 2 * i + 1];
        ids[n] = keyHi === 0 ? w[keys + 2 * i] : leaf.key(i);
        roots[n] = w[values + 2 * i];
      }
    }
    return { ids: ids.subarray(0, n), roots: roots.subarray(0, n) };
  };
  const [d, t] = await Promise.allSettled([readDetails(), readRoots()]);
  if (d.status === 'rejected') throw d.reason;
  if (t.status === 'rejected') throw t.reason;
  const cols = d.value;
  const { ids, roots } = t.value;
  // Keys are strictly increasing in both (the walks check it): merge them.
  const root = new Uint32Array(cols.count);
  let detailsOnly = -1;
  let topOnly = -1;
  let j = 0;
  for (let r = 0; r < cols.count; r++) {
    const dev = cols.devId[r];
    while (j < ids.length && ids[j] < dev) {
      if (topOnly < 0) topOnly = ids[j];
      j++;
    }
    if (j < ids.length && ids[j] === dev) root[r] = roots[j++];
    else if (detailsOnly < 0) detailsOnly = dev;
  }
  if (j < ids.length && topOnly < 0) topOnly = ids[j];
  if (detailsOnly >= 0) {
    throw new MetadataError('device-mismatch', `device ${detailsOnly} is in the details tree but has no mapping tree`, {
      devId: detailsOnly,
      tree: 'mapping-top',
    });
  }
  if (topOnly >= 0) {
    throw new MetadataError('device-mismatch', `device ${topOnly} has a mapping tree but no details entry`, { devId: topOnly, tree: 'details' });
  }
  return { ...cols, root };
}

/** The row of device `devId`, or -1. */
export function rowOf(t: DeviceTable, devId: number): number {
  return sortedIndexOf(t.devId, t.count, devId);
}

/** Index of `key` among the first `count` (strictly increasing) numbers of `keys`, or -1. */
export function sortedIndexOf(keys: ArrayLike<number>, count: number, key: number): number {
  let lo = 0;
  let hi = count;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keys[mid] < key) lo = mid + 1;
    else hi = mid;
  }
  return lo < count && keys[lo] === key ? lo : -1;
}

/** Row `r`'s transaction id (the one bigint of a row). */
export function transactionIdAt(t: DeviceTable, r: number): bigint {
  const hi = t.transactionHi[r];
  return hi === 0 ? BigInt(t.transactionLo[r]) : (BigInt(hi) << 32n) | BigInt(t.transactionLo[r]);
}

/** Row `r` as a DeviceDetails object. */
export function deviceAt(t: DeviceTable, r: number): DeviceDetails {
  return {
    devId: t.devId[r],
    mappedBlocks: t.mappedBlocks[r],
    transactionId: transactionIdAt(t, r),
    creationTime: t.creationTime[r],
    snapshottedTime: t.snapshottedTime[r],
  };
}
