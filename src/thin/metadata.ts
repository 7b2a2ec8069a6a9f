/**
 * ThinMetadata: read-only access to a thin pool's metadata, either the live
 * trees (inactive pool) or the trees held by a metadata snapshot (live pool).
 *
 *   await using md = await ThinMetadata.open('/dev/vg/pool_tmeta', { metadataSnap: true });
 *   for (const d of await md.devices()) ...
 *   for await (const run of md.mappings(1)) ...
 */
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { AbortError, DmthinError, MetadataError, MetadataSnapError, UsageError, check, describeValue, heldNowWords, snapshotReleased, throwIfAborted } from '../errors';
import { lookup as btreeLookup, walkLeaves } from '../pdata/btree';
import { Block, BlockSource, CachingBlockSource, MemoryBlockSource, NativeBlockSource, OpenOptions, readBlocksAnew } from '../pdata/block-source';
import { ENTRIES_PER_BITMAP, MAX_METADATA_BITMAPS, SpaceMap, SpaceMapKind } from '../pdata/space-map';
import { DeviceDetails, DEVICE_DETAILS_SIZE, parseDeviceDetails } from './device-details';
import { deviceAt, readDetailsTable, readDeviceTable, rowOf, type DetailsTable, type DeviceTable } from './device-table';
import { DeviceRunsVisitor, Mapping, MappingRun, mappingRunBatches, RunBatch, VirtualBlock, VirtualKey, WalkProgress, leafMapping, walkDeviceRuns } from './mappings';
import { parseSuperblock, Superblock } from './superblock';
import type { DeltaExtent, DeltaOptions, DeltaStats, RawDeltaExtent } from './delta';
import type * as Delta from './delta';

/** The delta walker, loaded on first use: the other commands' start-up does without it. */
const delta = (): typeof Delta => require('./delta') as typeof Delta;

/**
 * How metadata is read when the caller does not say: a block device with
 * O_DIRECT (the kernel writes a live pool's metadata past the page cache, so
 * cached pages can be stale), a regular file (an offline image: nothing
 * writes it behind the page cache) through the page cache, which the walk's
 * many small reads profit from.
 */
function defaultDirect(path: string): 'auto' | 'never' {
  // On this thread, as the open of a regular file is (native/block_reader.cc):
  // a short command starts no thread pool.
  // A path it cannot stat is left to the open, which reports why.
  try {
    return statSync(path, { throwIfNoEntry: false })?.isFile() ? 'never' : 'auto';
  } catch {
    return 'auto';
  }
}

/** Options of ThinMetadata.open; `direct` defaults to O_DIRECT for a block device and page-cache reads for a regular file. */
export interface ThinMetadataOptions extends OpenOptions {
  /**
   * Read through the pool's metadata snapshot: `true` for the held root named
   * in the live superblock, or a block number that must equal it.
   */
  metadataSnap?: boolean | number;
  /** Read from this source instead of opening `path`. The source is closed with the metadata. */
  source?: BlockSource;
}

/** Options of a mapping walk. */
export interface WalkOptions {
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Called as the work advances. */
  onProgress?: (p: WalkProgress) => void;
  /** Only virtual blocks in [begin, end). */
  begin?: VirtualBlock;
  /** End of the range (exclusive); default: the end of the device. */
  end?: VirtualBlock;
}

const U64_END = 1n << 64n;

/** A bigint virtual block as a hot-path key (a number while it is exact). */
function toKey(v: bigint, what: string): VirtualKey {
  if (typeof v !== 'bigint' || v < 0n || v > U64_END) throw new UsageError(`${what} must be a bigint 0..2^64, got ${String(v)}`);
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** Most metadata blocks a pool can have: the metadata space map's one index block holds 255 bitmaps. */
const MAX_METADATA_BLOCKS = MAX_METADATA_BITMAPS * ENTRIES_PER_BITMAP;
/** Data block numbers are 40 bits wide in a mapping value (the low 24 bits hold the time). */
const MAX_DATA_BLOCKS = 2 ** 40;

/**
 * The sizes everything else is bounded by, checked against what can be true
 * before any walk trusts them: bookkeeping sized from a checksummed but
 * absurd superblock would otherwise mean gigabyte allocations or long walks
 * of nothing. The metadata space map must fit its one index block and the
 * device; each data space-map bitmap occupies a metadata block, so the data
 * device cannot have more blocks than the metadata device has bitmaps for.
 */
function checkSizes(sb: Superblock, io: BlockSource): void {
  const meta = sb.metadataSpaceMap.nrBlocks;
  const data = sb.dataSpaceMap.nrBlocks;
  const deviceBlocks = Math.floor(io.sizeBytes / 4096);
  const fail = (msg: string, kind: 'space-map' | 'truncated' = 'space-map') =>
    new MetadataError(kind, `superblock: ${msg}`, { block: 0, tree: 'superblock', path: io.path });
  if (meta === 0) throw fail('the metadata space map has 0 blocks');
  if (meta > MAX_METADATA_BLOCKS) {
    throw fail(`the metadata space map claims ${meta} blocks; a pool's metadata has at most ${MAX_METADATA_BLOCKS} (255 bitmaps)`);
  }
  if (meta > deviceBlocks) {
    throw fail(
      `the metadata space map claims ${meta} blocks but ${io.path} holds ${deviceBlocks}: the device is truncated or is not this pool's metadata`,
      'truncated',
    );
  }
  if (data > MAX_DATA_BLOCKS || Math.ceil(data / ENTRIES_PER_BITMAP) > meta) {
    throw fail(`the data space map claims ${data} blocks, more than ${meta} metadata blocks can hold bitmaps for`);
  }
}

/**
 * @internal What to report for `e`, an error of a read through a metadata
 * snapshot that `live.verify()` checks: the snapshot's ESTALE when it was
 * released meanwhile (blocks the pool reused since read as damage), else `e` itself (also when the check cannot tell).
 */
export async function staleOr(live: { verify(): Promise<void> }, e: unknown): Promise<unknown> {
  if (e instanceof AbortError) return e;
  try {
    await live.verify();
  } catch (v) {
    if (v instanceof MetadataSnapError && v.code === 'ESTALE') {
      (v as { cause?: unknown }).cause ??= e;
      return v;
    }
  }
  return e;
}

/** A pool's thin metadata, read-only: superblock, devices, mappings, deltas, reference counts. */
export class ThinMetadata implements AsyncDisposable {
  /** The superblock whose trees are read: block 0, or the snapshot copy. */
  readonly superblock: Superblock;
  /** Block 0 (equal to `superblock` unless reading a metadata snapshot). */
  readonly liveSuperblock: Superblock;
  /** Held root block when reading through a metadata snapshot, else null. */
  readonly metadataSnap: number | null;
  /** Metadata device size in blocks (metadata space map nr_blocks of block 0). */
  readonly nrMetadataBlocks: number;
  /** Data device size in blocks (data space map of block 0: the snapshot copy has none). */
  readonly nrDataBlocks: number;

  private deviceCache?: Map<number, DeviceDetails>;
  private rootCache?: Map<number, number>;
  private tableCache?: DeviceTable;
  private detailsCache?: DetailsTable;
  /** The nodes mappingRoot and deviceDetails looked through last (see lookupRoot). */
  private lookupIo?: CachingBlockSource;
  private closed = false;
  /** The snapshot's superblock copy (block metadataSnap) as parsed at open: what snapshotChange() compares. */
  private heldCopy?: Buffer;

  private constructor(
    /** Where the metadata blocks are read from (see `dmthin/unstable`). */
    readonly io: BlockSource,
    live: Superblock,
    used: Superblock,
  ) {
    this.liveSuperblock = live;
    this.superblock = used;
    this.metadataSnap = used.location === 0 ? null : used.location;
    this.nrMetadataBlocks = live.metadataSpaceMap.nrBlocks;
    this.nrDataBlocks = live.dataSpaceMap.nrBlocks;
  }

  /** Opens metadata from a file or device path (read-only; a device with O_DIRECT, a regular file through the page cache unless `direct` says otherwise) or a given source. */
  static async open(path: string, opts: ThinMetadataOptions = {}): Promise<ThinMetadata> {
    check.string(path, 'path');
    check.options(opts, 'ThinMetadata.open options');
    opts ??= {}; // null, as Node's own APIs take it
    check.oneOf(opts.direct, 'direct', ['auto', 'always', 'never']);
    check.boolean(opts.exclusive, 'exclusive');
    if (opts.source !== undefined) check.methods(opts.source, 'source', 'a BlockSource', ['read', 'close']);
    const snap = opts.metadataSnap;
    if (snap !== undefined && typeof snap !== 'boolean' && !(Number.isSafeInteger(snap) && snap > 0)) {
      throw new UsageError(`metadataSnap must be true or a block number > 0, got ${describeValue(snap)}`);
    }
    // The reference tools refuse an inactive-only read of a device a live pool
    // holds (O_EXCL); through a metadata snapshot, the pool must stay open.
    const io =
      opts.source ??
      (await NativeBlockSource.open(path, { direct: opts.direct ?? defaultDirect(path), exclusive: opts.exclusive ?? (snap === undefined || snap === false) }));
    try {
      return await ThinMetadata.fromSource(io, snap);
    } catch (e) {
      await io.close();
      throw e;
    }
  }

  /** Metadata from an image in memory. */
  static async fromBuffer(image: Buffer | Uint8Array, opts: { metadataSnap?: boolean | number } = {}): Promise<ThinMetadata> {
    check.options(opts, 'ThinMetadata.fromBuffer options');
    opts ??= {}; // null, as Node's own APIs take it
    if (!(image instanceof Uint8Array)) throw new UsageError(`fromBuffer takes a Buffer or Uint8Array of a metadata image, got ${image === null ? 'null' : typeof image}`);
    const buf = Buffer.isBuffer(image) ? image : Buffer.from(image.buffer, image.byteOffset, image.byteLength);
    // Said here with the buffer's own length: the block source counts whole blocks only (0 for 1-4095 bytes).
    if (buf.length < 4096) throw new MetadataError('truncated', `<memory> is ${buf.length} bytes: too small to hold a superblock`, { path: '<memory>', block: 0 });
    return ThinMetadata.open('<memory>', { ...opts, source: new MemoryBlockSource(buf) });
  }

  private static async fromSource(io: BlockSource, snap: boolean | number | undefined): Promise<ThinMetadata> {
    if (io.sizeBytes < 4096) {
      throw new MetadataError('truncated', `${io.path} is ${io.sizeBytes} bytes: too small to hold a superblock${xmlHint(io.path)}`, { path: io.path, block: 0 });
    }
    const [b0] = await io.read([0]);
    let live: Superblock;
    try {
      live = parseSuperblock(b0);
    } catch (e) {
      // Named by its file (the input may not be what the user meant). The commonest
      // wrong input, thin_dump's XML where its binary metadata belongs, is said so.
      if (e instanceof MetadataError && io.path !== '<memory>') {
        const text = b0.data.subarray(0, 256).toString('latin1').trimStart().startsWith('<');
        e.message = text ? `${io.path} is not binary pool metadata (${e.message})${xmlHint(io.path) || ': it starts with \'<\', as text does'}` : `${io.path}: ${e.message}`;
        (e as MetadataError & { path?: string }).path ??= io.path;
      }
      throw e;
    }
    checkSizes(live, io);
    let used = live;
    let heldCopy: Buffer | undefined;
    if (snap !== undefined && snap !== false) {
      const held = live.heldRoot;
      if (held === 0) {
        throw new MetadataSnapError('ENODATA', `no current metadata snapshot in ${io.path}`, { path: io.path });
      }
      if (typeof snap === 'number' && snap !== held) {
        throw new MetadataSnapError('EINVAL', `metadata snapshot at block ${snap} does not match the held root ${held} in the superblock`, {
          path: io.path,
          block: snap,
          heldRoot: held,
        });
      }
      if (held >= live.metadataSpaceMap.nrBlocks) {
        throw new MetadataError('block-range', `held root ${held} is beyond the metadata device`, { block: held });
      }
      const [hb] = await io.read([held]);
      used = parseSuperblock(hb);
      heldCopy = Buffer.from(hb.data);
      // A pool's data block size never changes: a held copy that says otherwise is damaged, and its
      // trees' block numbers would be printed in other units than the live data device's size.
      if (used.dataBlockSize !== live.dataBlockSize) {
        throw new MetadataError(
          'block-size',
          `the metadata snapshot's superblock (block ${held}) says data blocks of ${used.dataBlockSize} sectors, the live superblock ${live.dataBlockSize}: the snapshot is damaged`,
          { path: io.path, block: held },
        );
      }
    }
    const md = new ThinMetadata(io, live, used);
    md.heldCopy = heldCopy;
    return md;
  }

  /**
   * Read through a metadata snapshot: whether the snapshot read is still
   * the one held, judged from the device as it is now (block 0's held root,
   * and the copy at metadataSnap, byte for byte as read at open). A pool
   * that releases a snapshot may reuse every block it named, so a read of a
   * snapshot released before it ended may have read another tree's blocks
   * as its own. null: still held (or nothing to tell: no snapshot, metadata
   * in memory, or a caller's source already closed); else what is held now
   * ('none is held now', 'block N is held now', 'another is held at the same
   * block now'). The device is opened anew (read-only, not exclusively, with
   * the same O_DIRECT as this reader), so this works after close(), and
   * reads the kernel's committed state; a pool's status can tell sooner
   * (LiveMetadata.verify checks both). A held copy written again with the
   * very same bytes (same roots, transaction and time) cannot be told apart.
   */
  async snapshotChange(): Promise<string | null> {
    const held = this.metadataSnap;
    if (held === null || !this.heldCopy) return null;
    let b0: Block;
    let hb: Block;
    if (this.io instanceof NativeBlockSource) [b0, hb] = await readBlocksAnew(this.io.path, [0, held], this.io.direct);
    else if (this.io instanceof MemoryBlockSource || this.closed) return null;
    else [b0, hb] = await this.io.read([0, held]);
    const now = parseSuperblock(b0).heldRoot;
    return heldNowWords(held, now, now === held && hb.data.equals(this.heldCopy));
  }

  /**
   * Rejects with MetadataSnapError ESTALE when the metadata snapshot read is
   * no longer the one held (snapshotChange()): call it after a read through
   * a snapshot, before its result is used.
   */
  async verifySnapshot(): Promise<void> {
    const what = await this.snapshotChange();
    if (what !== null) throw snapshotReleased(this.io.path, this.metadataSnap!, what, { path: this.io.path });
  }

  private check(): void {
    if (this.closed) throw new DmthinError('EBADF', 'metadata is closed', { path: this.io.path });
  }

  /** Device `devId`'s entry in the top-level tree (valueSize 8) or the details tree (24), looked up. */
  private async lookupDevice(tree: 'mapping-top' | 'details', devId: number): ReturnType<typeof btreeLookup> {
    // Through the last nodes looked at: a second lookup in a small tree reads nothing.
    this.lookupIo ??= new CachingBlockSource(this.io);
    const details = tree === 'details';
    // Device ids above 2^53 are damage to every command (README): refused in every node a lookup reads.
    const opts = { tree, valueSize: details ? DEVICE_DETAILS_SIZE : 8, nrMetadataBlocks: this.nrMetadataBlocks, safeKeys: true };
    const root = details ? this.superblock.deviceDetailsRoot : this.superblock.dataMappingRoot;
    // Once per tree, the path of its largest key (the last entry of each node down the right
    // edge): an id above 2^53 is damage to every command, and a lookup of another device in
    // another leaf never read the leaf that holds it (a review: delta exited 0 on such a tree).
    const checked = (this.largestKeyChecked ??= new Set());
    if (!checked.has(tree)) {
      await btreeLookup(this.lookupIo, root, U64_END - 1n, opts);
      checked.add(tree);
    }
    return btreeLookup(this.lookupIo, root, devId, opts);
  }

  /** Device trees whose largest key lookupDevice has checked. */
  private largestKeyChecked?: Set<string>;

  /** One device's mapping root from the top-level tree (a lookup), undefined when it has none. */
  private async lookupRoot(devId: number): Promise<number | undefined> {
    const hit = await this.lookupDevice('mapping-top', devId);
    if (!hit) return undefined;
    const root = hit.node.value64(hit.index);
    if (root >= this.nrMetadataBlocks) {
      throw new MetadataError('block-range', `device ${devId}: mapping root ${root} is beyond the metadata device`, { block: hit.node.nr, devId, tree: 'mapping-top' });
    }
    return root;
  }

  /**
   * @internal One device's details, undefined when it has none: from the
   * details or the device table when they were read, else looked up in the
   * details tree (not read whole, as devices() does).
   */
  async deviceDetails(devId: number): Promise<DeviceDetails | undefined> {
    this.check();
    return this.detailsOf(devId);
  }

  private async detailsOf(devId: number): Promise<DeviceDetails | undefined> {
    if (this.deviceCache) return this.deviceCache.get(devId);
    const t = this.tableCache;
    if (t) {
      const row = rowOf(t, devId);
      return row >= 0 ? deviceAt(t, row) : undefined;
    }
    const hit = await this.lookupDevice('details', devId);
    return hit ? parseDeviceDetails(hit.node, hit.index) : undefined;
  }

  /** Device details by id, in id order. */
  async devices(opts: { signal?: AbortSignal } = {}): Promise<Map<number, DeviceDetails>> {
    opts = check.walk(opts, 'devices options');
    this.check();
    throwIfAborted(opts.signal); // also when the answer is cached
    if (this.deviceCache) return this.deviceCache;
    const out = new Map<number, DeviceDetails>();
    for await (const leaf of walkLeaves(this.io, this.superblock.deviceDetailsRoot, {
      tree: 'details',
      valueSize: DEVICE_DETAILS_SIZE,
      nrMetadataBlocks: this.nrMetadataBlocks,
      signal: opts.signal,
    })) {
      for (let i = 0; i < leaf.nrEntries; i++) {
        const d = parseDeviceDetails(leaf, i);
        out.set(d.devId, d);
      }
    }
    this.deviceCache = out;
    return out;
  }

  /** Top-level mapping tree: device id -> root of its bottom-level tree. */
  async deviceRoots(opts: { signal?: AbortSignal } = {}): Promise<Map<number, number>> {
    opts = check.walk(opts, 'deviceRoots options');
    this.check();
    throwIfAborted(opts.signal); // also when the answer is cached
    if (this.rootCache) return this.rootCache;
    const out = new Map<number, number>();
    for await (const leaf of walkLeaves(this.io, this.superblock.dataMappingRoot, {
      tree: 'mapping-top',
      valueSize: 8,
      nrMetadataBlocks: this.nrMetadataBlocks,
      signal: opts.signal,
    })) {
      for (let i = 0; i < leaf.nrEntries; i++) {
        const root = leaf.value64(i);
        if (root >= this.nrMetadataBlocks) {
          throw new MetadataError('block-range', `device ${leaf.key(i)}: mapping root ${root} is beyond the metadata device`, {
            block: leaf.nr,
            devId: leaf.key(i),
            tree: 'mapping-top',
          });
        }
        out.set(leaf.key(i), root);
      }
    }
    this.rootCache = out;
    return out;
  }

  /**
   * Every device's details as columns (see device-table.ts): the details
   * tree alone, as `ls` needs it for the fields that need no mapping walk
   * (thin_ls 0.9.0 reads no more for them). The full table's columns when
   * it has been read; read once and kept otherwise.
   *
   * @internal ls uses it; its shape may change.
   */
  async detailsTable(opts: { signal?: AbortSignal } = {}): Promise<DetailsTable> {
    opts = check.walk(opts, 'detailsTable options');
    this.check();
    throwIfAborted(opts.signal); // also when the answer is cached
    if (this.tableCache) return this.tableCache;
    if (this.detailsCache) return this.detailsCache;
    const t = await readDetailsTable({ io: this.io, detailsRoot: this.superblock.deviceDetailsRoot, nrMetadataBlocks: this.nrMetadataBlocks }, opts.signal);
    this.detailsCache = t;
    return t;
  }

  /**
   * Every device as columns (see device-table.ts), read once and kept: the
   * details tree and the top-level mapping tree, checked to name the same
   * devices.
   *
   * @internal dump, ls and rmap use it; its shape may change.
   */
  async deviceTable(opts: { signal?: AbortSignal } = {}): Promise<DeviceTable> {
    opts = check.walk(opts, 'deviceTable options');
    this.check();
    throwIfAborted(opts.signal); // also when the answer is cached
    if (this.tableCache) return this.tableCache;
    const t = await readDeviceTable(
      { io: this.io, detailsRoot: this.superblock.deviceDetailsRoot, mappingRoot: this.superblock.dataMappingRoot, nrMetadataBlocks: this.nrMetadataBlocks },
      opts.signal,
    );
    this.tableCache = t;
    return t;
  }

  /**
   * Devices with their mapping roots, after checking that the details tree and
   * the top-level mapping tree name the same devices.
   */
  async checkedDevices(opts: { signal?: AbortSignal } = {}): Promise<
    Map<
      number,
      DeviceDetails & {
        /** Root block of the device's mapping tree. */
        root: number;
      }
    >
  > {
    const t = await this.deviceTable(opts);
    const out = new Map<number, DeviceDetails & { root: number }>();
    for (let r = 0; r < t.count; r++) {
      const d = deviceAt(t, r);
      // Fields listed, not spread: one object shape for every device.
      out.set(d.devId, {
        devId: d.devId,
        mappedBlocks: d.mappedBlocks,
        transactionId: d.transactionId,
        creationTime: d.creationTime,
        snapshottedTime: d.snapshottedTime,
        root: t.root[r],
      });
    }
    return out;
  }

  /**
   * @internal The root of device `devId`'s mapping tree (ENODEV when it has
   * none): from the device table or the roots when they were read, else
   * looked up in the top-level tree (the nodes on the way, validated, as
   * thin_delta does), not read whole: a delta of two devices in a pool of
   * 70,000 read all 70,000 roots, and all their details, for two of each.
   */
  async mappingRoot(devId: number, side?: string): Promise<number> {
    this.check();
    return this.rootOf(devId, side);
  }

  private async rootOf(devId: number, side?: string): Promise<number> {
    check.devId(devId, side ? `the ${side} device id` : 'the device id');
    let root: number | undefined;
    const t = this.tableCache;
    if (t) {
      const row = rowOf(t, devId);
      if (row >= 0) root = t.root[row];
    } else {
      root = this.rootCache ? this.rootCache.get(devId) : await this.lookupRoot(devId);
      // The kernel opens no thin without its details (ENODATA), and a
      // delta's count check needs them: a mapping tree without them is
      // damage, as dump and check say (the device table is joined on read).
      if (root !== undefined && (await this.detailsOf(devId)) === undefined) {
        throw new MetadataError('device-mismatch', `device ${devId} has a mapping tree but no details entry`, { devId, tree: 'details' });
      }
    }
    if (root === undefined) throw this.noMappingTree(devId, side);
    return root;
  }

  private noMappingTree(devId: number, side?: string): DmthinError {
    const where = this.metadataSnap !== null ? ` (metadata snapshot at block ${this.metadataSnap})` : '';
    return new DmthinError('ENODEV', `no mapping tree for ${side ? `${side} device ` : 'device '}${devId} in the metadata${where}`, { devId, path: this.io.path });
  }

  /**
   * Merged mapping runs of one device, in batches (fast path for formatters).
   * A walk of the whole device also checks that it found as many mappings as
   * the details tree says the device has: the kernel keeps that count exact,
   * and a node whose nr_entries was lowered (still a third full, checksum
   * valid) would otherwise lose mappings without any other trace.
   * @internal The batch is reused; use `mappings()` for MappingRun objects.
   */
  async *mappingBatches(devId: number, opts: WalkOptions = {}): AsyncGenerator<RunBatch> {
    opts = check.walk(opts, 'mappings options');
    this.check();
    const root = await this.rootOf(devId);
    const begin = opts.begin === undefined ? undefined : toKey(opts.begin, 'begin');
    const end = opts.end === undefined || opts.end === U64_END ? undefined : toKey(opts.end, 'end');
    if (opts.begin !== undefined && opts.end !== undefined && opts.end < opts.begin) {
      throw new UsageError(`bad range: end ${opts.end} is before begin ${opts.begin} (end is one past the last block)`);
    }
    const whole = (begin === undefined || begin === 0) && end === undefined;
    const expected = whole ? (await this.devices({ signal: opts.signal })).get(devId)?.mappedBlocks : undefined;
    let found = 0;
    for await (const batch of mappingRunBatches(this.io, root, {
      devId,
      nrMetadataBlocks: this.nrMetadataBlocks,
      nrDataBlocks: this.nrDataBlocks,
      signal: opts.signal,
      onProgress: opts.onProgress,
      begin,
      end,
    })) {
      if (expected !== undefined) for (let i = 0; i < batch.count; i++) found += batch.length[i];
      yield batch;
    }
    if (expected !== undefined) this.checkMappedCount(devId, expected, found);
  }

  /**
   * The merged runs of many whole devices, in the order given, reported to
   * `visitor` (k is the index in `devIds`). Faster than one mappingBatches
   * walk per device when there are many small devices: roots are read in
   * batches ahead of the walk and one-leaf trees are decoded without an
   * async step each. Each device's count is checked against its details, as
   * mappingBatches does.
   *
   * @internal dump, ls and rmap use it; its visitor's shape may change.
   */
  async walkDevices(
    devIds: ArrayLike<number>,
    visitor: DeviceRunsVisitor,
    opts: { signal?: AbortSignal; onProgress?: (p: { devices: number; mappings: number }) => void } = {},
  ): Promise<void> {
    this.check();
    const t = await this.deviceTable(opts);
    const n = devIds.length;
    const rows = new Uint32Array(n);
    const roots = new Uint32Array(n);
    for (let k = 0; k < n; k++) {
      const r = rowOf(t, devIds[k]);
      if (r < 0) throw this.noMappingTree(devIds[k]); // the table holds every device with a mapping tree
      rows[k] = r;
      roots[k] = t.root[r];
    }
    await walkDeviceRuns(
      this.io,
      { count: n, devId: devIds, root: roots },
      {
        begin: (k) => visitor.begin(k),
        runs: (k, b) => visitor.runs(k, b),
        end: (k, found) => {
          this.checkMappedCount(devIds[k], t.mappedBlocks[rows[k]], found);
          return visitor.end(k, found);
        },
      },
      { nrMetadataBlocks: this.nrMetadataBlocks, nrDataBlocks: this.nrDataBlocks, signal: opts.signal, onProgress: opts.onProgress },
    );
  }

  private checkMappedCount(devId: number, expected: number, found: number): void {
    if (found === expected) return;
    throw new MetadataError(
      'mapped-count',
      `device ${devId}: its mapping tree holds ${found} mappings but its details say ${expected}: mappings are missing or the details are stale (run dmthin check)`,
      { devId, tree: 'mapping', expected, found },
    );
  }

  /** Merged mapping runs `{ originBegin, dataBegin, length, time }` of one device, in virtual-block order (originBegin a bigint). */
  async *mappings(devId: number, opts: WalkOptions = {}): AsyncGenerator<MappingRun> {
    opts = check.walk(opts, 'mappings options');
    // An abort is seen at the next run, not a batch (thousands of runs) later.
    for await (const batch of this.mappingBatches(devId, opts)) {
      for (let i = 0; i < batch.count; i++) {
        throwIfAborted(opts.signal);
        yield batch.run(i);
      }
    }
  }

  /**
   * Differences between two thin devices' mappings, as extents in
   * virtual-block order (see delta.ts). Subtrees both devices share are not
   * read twice, and not at all with `includeSame: false`.
   */
  async *delta(left: number, right: number, opts: DeltaOptions = {}): AsyncGenerator<DeltaExtent, DeltaStats> {
    opts = check.walk(opts, 'delta options');
    return yield* unbatch(this.deltaExtentBatches(left, right, opts), opts.signal);
  }

  /** Delta of two raw bottom-level roots (thin_delta --root1/--root2). */
  async *deltaOfRoots(
    leftRoot: number,
    rightRoot: number,
    opts: DeltaOptions & { leftId?: number; rightId?: number } = {},
  ): AsyncGenerator<DeltaExtent, DeltaStats> {
    opts = check.walk(opts, 'deltaOfRoots options');
    return yield* unbatch(this.deltaRootBatches(leftRoot, rightRoot, opts), opts.signal);
  }

  /** @internal Batches of the delta of two raw roots (fast path for formatters). */
  async *deltaRootBatches(
    leftRoot: number,
    rightRoot: number,
    opts: DeltaOptions & { leftId?: number; rightId?: number } = {},
  ): AsyncGenerator<RawDeltaExtent[], DeltaStats> {
    opts = check.walk(opts, 'deltaOfRoots options');
    this.check();
    for (const [what, b] of [['left', leftRoot], ['right', rightRoot]] as const) {
      if (!Number.isSafeInteger(b) || b < 0 || b >= this.nrMetadataBlocks) throw new UsageError(`${what} root must be a metadata block number 0..${this.nrMetadataBlocks - 1}, got ${describeValue(b)}`);
    }
    // A node of the top-level tree reads as a mapping tree: its device ids as
    // virtual blocks, its roots as data blocks (outside tests: exit 0).
    const foreign = await this.deviceTreeNodes(opts.signal);
    for (const [what, b] of [['left', leftRoot], ['right', rightRoot]] as const) {
      const tree = foreign.get(b);
      if (tree) throw new UsageError(`${what} root ${b} is a node of ${tree}, not of a device's mapping tree: give a device's own root, or its id (--snap1/--snap2)`);
    }
    return yield* delta().deltaBatches(this.io, leftRoot, rightRoot, { ...opts, nrMetadataBlocks: this.nrMetadataBlocks, nrDataBlocks: this.nrDataBlocks });
  }

  /**
   * Every node of the top-level mapping tree and of the details tree, of the
   * live metadata and of a held snapshot, each with its tree in words: roots
   * given to deltaOfRoots must be none of them.
   */
  private async deviceTreeNodes(signal?: AbortSignal): Promise<Map<number, string>> {
    const out = new Map<number, string>();
    const sbs: [Superblock, string][] = [[this.liveSuperblock, 'the live metadata']];
    const held = this.liveSuperblock.heldRoot;
    // Opened through the snapshot (-m), it is already read.
    if (held !== 0 && held === this.superblock.location) sbs.push([this.superblock, 'the metadata snapshot']);
    else if (held !== 0 && held < this.nrMetadataBlocks) {
      const [hb] = await this.io.read([held]);
      try {
        sbs.push([parseSuperblock(hb), 'the metadata snapshot']);
      } finally {
        hb.done();
      }
    }
    for (const [sb, whose] of sbs) {
      for (const [root, tree, valueSize] of [
        [sb.dataMappingRoot, 'top-level mapping', 8],
        [sb.deviceDetailsRoot, 'device details', DEVICE_DETAILS_SIZE],
      ] as const) {
        const name = `${whose}'s ${tree} tree`;
        for await (const _ of walkLeaves(this.io, root, {
          tree: tree === 'top-level mapping' ? 'mapping-top' : 'details',
          valueSize,
          nrMetadataBlocks: this.nrMetadataBlocks,
          signal,
          transient: true,
          onNode: (n) => void out.set(n.nr, name),
        }));
      }
    }
    return out;
  }

  /** @internal Batches of delta extents (fast path for formatters and send). Returns the walk's counters. */
  async *deltaExtentBatches(left: number, right: number, opts: DeltaOptions = {}): AsyncGenerator<RawDeltaExtent[], DeltaStats> {
    opts = check.walk(opts, 'delta options');
    check.devId(left, 'the left device id');
    check.devId(right, 'the right device id');
    const [l, r] = [await this.rootOf(left, 'left'), await this.rootOf(right, 'right')];
    this.check();
    const stats = yield* delta().deltaBatches(this.io, l, r, { ...opts, leftId: left, rightId: right, nrMetadataBlocks: this.nrMetadataBlocks, nrDataBlocks: this.nrDataBlocks });
    // With `same`, both trees were walked whole: their counts must match the details.
    if (opts.includeSame !== false) {
      for (const [id, found] of [[left, stats.leftBlocks], [right, stats.rightBlocks]] as const) {
        const d = await this.detailsOf(id);
        if (d) this.checkMappedCount(id, d.mappedBlocks, found);
      }
    } else {
      // Without it the subtrees both share were skipped on both sides, so
      // what each side read differs by exactly what their counts differ by.
      // A leaf of one side cut short (nr_entries lowered within the fill
      // rule) dropped mappings from the delta, and from an incremental send,
      // backup or merge built on it, without this (an outside test).
      const [dl, dr] = [await this.detailsOf(left), await this.detailsOf(right)];
      if (dl && dr && dl.mappedBlocks - dr.mappedBlocks !== stats.leftBlocks - stats.rightBlocks) {
        throw new MetadataError(
          'mapped-count',
          `devices ${left} and ${right}: outside the subtrees they share, their mapping trees hold ${stats.leftBlocks} and ${stats.rightBlocks} mappings, but their details' counts (${dl.mappedBlocks} and ${dr.mappedBlocks}) differ by ${dl.mappedBlocks - dr.mappedBlocks}: mappings are missing or the details are stale (run dmthin check)`,
          { devId: left, tree: 'mapping', expected: dl.mappedBlocks - dr.mappedBlocks, found: stats.leftBlocks - stats.rightBlocks },
        );
      }
    }
    return stats;
  }

  /** Where one virtual block of a device is mapped, or null. */
  async lookup(devId: number, block: VirtualBlock): Promise<Mapping | null> {
    this.check();
    if (typeof block !== 'bigint' || block < 0n || block >= U64_END) throw new UsageError(`bad virtual block ${String(block)}: it must be a bigint 0..2^64-1`);
    const root = await this.rootOf(devId);
    const hit = await btreeLookup(this.io, root, toKey(block, 'block'), {
      tree: 'mapping',
      devId,
      valueSize: 8,
      nrMetadataBlocks: this.nrMetadataBlocks,
    });
    return hit ? leafMapping(hit.node, hit.index) : null;
  }

  /**
   * A space map of the live superblock (a metadata snapshot has none, so
   * counts always describe the current pool, not the snapshot).
   */
  spaceMap(kind: SpaceMapKind): SpaceMap {
    this.check();
    if (kind !== 'data' && kind !== 'metadata') throw new UsageError(`unknown space map ${describeValue(kind)}: it is 'data' or 'metadata'`);
    const sb = this.liveSuperblock;
    return new SpaceMap(this.io, kind, kind === 'data' ? sb.dataSpaceMap : sb.metadataSpaceMap, this.nrMetadataBlocks);
  }

  /** Reference count of a data or metadata block, from the on-disk space map. */
  async refCount(kind: SpaceMapKind, block: number): Promise<number> {
    const sm = this.spaceMap(kind);
    // A bad argument, not corruption: the space map's own range error is for block numbers read from metadata.
    if (!Number.isSafeInteger(block) || block < 0 || block >= sm.nrBlocks) {
      throw new UsageError(`bad ${kind} block ${String(block)}: it must be an integer 0..${sm.nrBlocks - 1} (the ${kind} space map has ${sm.nrBlocks} blocks)`, { block: Number.isSafeInteger(block) ? block : undefined });
    }
    return sm.refCount(block);
  }

  /** Closes the underlying file or device. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.io.close();
  }

  /** Closes it (`await using`). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Flattens batches of raw extents into public ones, passing the walk's result through. */
async function* unbatch(gen: AsyncGenerator<RawDeltaExtent[], DeltaStats>, signal?: AbortSignal): AsyncGenerator<DeltaExtent, DeltaStats> {
  const { publicExtent } = delta();
  for (;;) {
    const r = await gen.next();
    if (r.done) return r.value;
    // An abort is seen at the next extent, not a batch (thousands of extents) later.
    for (const e of r.value) {
      throwIfAborted(signal);
      yield publicExtent(e);
    }
  }
}

/**
 * ': it looks like thin_dump XML ...' when the file at `path` starts as
 * thin_dump's XML does (a metadata image is binary), else ''.
 */
function xmlHint(path: string): string {
  const head = readFileHead(path, 256).toString('latin1').trimStart();
  if (!/^<(\?xml|superblock)\b/.test(head)) return '';
  return `: it looks like thin_dump XML; make a metadata image from it with 'thin_restore -i ${path} -o IMAGE' and give the image`;
}

/**
 * @internal The first `n` bytes of the file at `path` (fewer if it is
 * shorter; none if it cannot be read): what an input that is no metadata is
 * told apart by (thin_dump XML, a send stream).
 */
export function readFileHead(path: string, n: number): Buffer {
  try {
    const fd = openSync(path, 'r');
    try {
      const b = Buffer.alloc(n);
      return b.subarray(0, readSync(fd, b, 0, n, 0));
    } finally {
      closeSync(fd);
    }
  } catch {
    return Buffer.alloc(0);
  }
}
