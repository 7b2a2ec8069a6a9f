/**
 * backup(): one thin snapshot into a backup repository (docs/repository.md).
 *
 * What is read: with a base — the newest backup of the volume whose
 * snapshot still exists, unchanged, in the pool (its identity, as send
 * decides a base) — only the pruning delta between the two snapshots: the
 * blocks either maps differently are read again, the chunks of every other
 * block are the base manifest's entries, copied in one streamed merge.
 * Without one, every mapped block is read. Unmapped ranges (and chunks that
 * read as all zeros) are holes: no entry, nothing stored.
 *
 * The chunks are read in batches (the native reader, off the JS thread),
 * a bounded number of batches in flight; each chunk is hashed and put
 * through the backup session unless the repository already has it (the
 * session's resumedIds, or a put of this run). The manifest is committed
 * last: a backup interrupted at any point leaves no backup, and the next
 * run skips the chunks already stored.
 *
 * From a live pool the metadata is read through the metadata snapshot, which
 * is released on every path before the data is read (from the snapshot's
 * active device, or one activated read-only for the backup).
 */
import { check, DmthinError, RepoError, UsageError, throwIfAborted } from '../errors';
import { withMetadataSnapshot } from '../pool/live-metadata';
import { liveThin, withThinData } from './live-thin';
import { ThinPool } from '../pool/thin-pool';
import { ThinMetadata } from '../thin/metadata';
import { SECTOR_SIZE } from '../units';
import { targetIdentity } from '../output/file';
import { NativeDataSource, readBlocksExactly, type DataSource } from '../stream/send/data-source';
import { ExtentStore, type SendExtent } from '../stream/send/extent-store';
import { EMPTY_POOL_ID, identityOf, mappingRootDigest, offlinePoolId, planSend } from '../stream/send/plan';
import { identityKey, type SnapshotIdentity } from '../stream/format/records';
import { allowListeners, chunksAtOnce, Repository, type BackupSession, type BackupSummary, type KeySource, type ManifestEntry, type ManifestHeader } from '../repo/repository';
import { Semaphore } from '../repo/semaphore';
import { killAfterCount } from './test-seams';

/** Largest chunk: a pool block above it is split into equal chunks (docs/repository.md "Chunk size"). */
export const MAX_CHUNK_BYTES = 4 << 20;

/**
 * The chunk size for a pool data block size (bytes): the block itself when
 * it is at most 4 MiB, else the largest divisor of the block that is a
 * multiple of 64 KiB and at most 4 MiB. A chunk never spans two blocks, so
 * a block the delta names is re-read alone, and chunks of the same data
 * dedupe wherever the block sits.
 */
export function chunkSizeFor(blockBytes: number): number {
  check.integer(blockBytes, 'blockBytes');
  if (blockBytes <= MAX_CHUNK_BYTES) return blockBytes;
  const unit = 64 * 1024;
  const n = blockBytes / unit;
  for (let m = MAX_CHUNK_BYTES / unit; m >= 1; m--) if (Number.isInteger(n / m)) return m * unit;
  return unit;
}

/** Progress of backup. */
export interface BackupProgress {
  /** 'metadata': finding what to read; 'data': reading and storing chunks. */
  phase: 'metadata' | 'data';
  /** Chunks read so far. */
  chunksRead: number;
  /** Chunks to read in all (known in the data phase). */
  chunksToRead?: number;
  /** Bytes of data read. */
  bytesRead: number;
  /** Bytes stored in the repository (compressed, encrypted). */
  bytesUploaded: number;
}

interface CommonBackupOptions {
  /** The repository: a location (a directory, or `s3://BUCKET/PREFIX`) or an open Repository. */
  repo: string | Repository;
  /** The key of an encrypted repository given by location. */
  key?: KeySource;
  /** The volume's name in the repository: `[A-Za-z0-9._-]{1,128}`. */
  volume: string;
  /** Thin device id of the snapshot. */
  snap: number;
  /** The thin device's size in bytes (see send's deviceSize: never guessed). */
  deviceSize?: number;
  /** Pool identity recorded in the manifest's source (default as send: dm uuid or name; offline, see offlinePoolId). */
  poolId?: string;
  /** Ignore earlier backups: read every mapped block. */
  full?: boolean;
  /** Read batches in flight (default 4). */
  concurrency?: number;
  /** Chunks compressed and uploaded at once (default: chunksAtOnce of the chunk size, 8 to 32). */
  uploads?: number;
  /** Bytes per read batch (default 8 MiB). */
  batchBytes?: number;
  /** Cancels the work, which then rejects with AbortError (no backup is committed). */
  signal?: AbortSignal;
  /** Called as the work advances. */
  onProgress?: (p: BackupProgress) => void;
  /** Told of what the backup works around (a backup whose header cannot be read: skipped), one line each. */
  onWarning?: (message: string) => void;
}

/** backup from a live pool: through its metadata snapshot, data from the snapshot's thin device. */
export interface PoolBackupOptions extends CommonBackupOptions {
  /** The pool, by dm name, VG/LV or device node, or as a ThinPool. */
  pool: string | ThinPool;
  /** Where the list of blocks to read is spilled when large (default TMPDIR). */
  tmpDir?: string;
}

/** backup from offline images: the metadata and the pool's data device (or their images). */
export interface ImageBackupOptions extends CommonBackupOptions {
  /** Metadata device or image. */
  metadata: string;
  /** Read through the held metadata snapshot (true, or its block number). */
  metadataSnap?: boolean | number;
  /** The pool's data device or its image (blocks read at their data block). */
  data: string;
}

/** Options of backup: from a live pool, or from images. */
export type BackupOptions = PoolBackupOptions | ImageBackupOptions;

/** What a backup stored. */
export interface BackupResult {
  /** The new backup's id. */
  id: string;
  /** The volume name. */
  volume: string;
  /** The backup this one was computed from (its unchanged chunks copied), or null (full). */
  base: string | null;
  /** Device size in bytes. */
  deviceSize: number;
  /** Chunk size in bytes. */
  chunkSize: number;
  /** Chunks the backup refers to (holes excluded). */
  chunks: number;
  /** Chunks read from the device. */
  chunksRead: number;
  /** Chunks this backup stored (absent from the repository before). */
  chunksNew: number;
  /** Chunks read that the repository already had (dedup, or stored by an interrupted run). */
  chunksDeduplicated: number;
  /** Entries copied from the base without reading. */
  chunksFromBase: number;
  /** Chunks that read as zeros, kept as holes. */
  zeroChunks: number;
  /** Bytes read from the device. */
  bytesRead: number;
  /** Bytes stored by this backup (after compression and encryption). */
  bytesUploaded: number;
  /** What the manifest records as the source (pool, device, snapshot identity). */
  source: BackupSource;
  /** Milliseconds from start to commit. */
  durationMs: number;
}

/** A manifest's `source` as backup writes it. */
export interface BackupSource {
  /** Always 'dm-thin'. */
  kind: 'dm-thin';
  /** The pool identity (dm uuid or name; offline: superblock uuid or root digest). */
  pool: string;
  /** Thin device id of the snapshot. */
  devId: number;
  /** Pool transaction id when the snapshot was created (decimal). */
  transactionId: string;
  /** Pool time when the snapshot was created. */
  creationTime: number;
  /** The snapshot identity's key (SHA-256 of its canonical encoding, docs/stream-format.md §3). */
  identity: string;
  /** The pool's data block size in sectors. */
  dataBlockSize: number;
  /**
   * SHA-256 of the snapshot's mapping-tree root node when it was backed up
   * (mappingRootDigest). A later backup does not take this one as its base
   * when the digest has changed: the snapshot's mappings were changed (it
   * was written) since. Absent in backups made before dmthin recorded it.
   */
  mappingRoot?: string;
  /**
   * Offline without a pool id given: what the data image read was (its
   * file's device, inode and birth time, or a block device's dm uuid;
   * targetIdentity). A later such backup takes this one as its base only
   * from the same image:
   * two pools' metadata can be byte-identical (a copied or templated pool)
   * while their data differ. Absent for a live pool's backup and in backups
   * made before dmthin recorded it.
   */
  dataImage?: string;
}

const VOLUME = /^[A-Za-z0-9._-]{1,128}$/;

function sourceOf(id: SnapshotIdentity, dataBlockSize: number, mappingRoot: string, dataImage: string | undefined): BackupSource {
  return {
    kind: 'dm-thin',
    pool: id.pool,
    devId: id.devId,
    transactionId: id.transactionId.toString(),
    creationTime: id.creationTime,
    identity: identityKey(id),
    dataBlockSize,
    mappingRoot,
    ...(dataImage !== undefined ? { dataImage } : {}),
  };
}

/** The source of a manifest written by backup, or null (another writer, another format). */
function readSource(s: Record<string, unknown>): BackupSource | null {
  if (s.kind !== 'dm-thin' || typeof s.identity !== 'string' || !Number.isInteger(s.devId) || typeof s.pool !== 'string') return null;
  return s as unknown as BackupSource;
}

/**
 * The base: the newest backup of the volume, at this chunk and device size,
 * whose snapshot is in `md` with the identity it had then (same pool, device,
 * creation time and transaction: not deleted and reused) and, where the
 * backup recorded it, the same mapping-tree root (its mappings not changed
 * since). A snapshot whose mappings changed is passed over with a warning:
 * it was written after its backup, and blocks it maps as the new snapshot
 * does would be taken from chunks that no longer hold them.
 */
async function findBase(
  md: ThinMetadata,
  candidates: readonly BackupSummary[],
  poolId: string | undefined,
  chunkSize: number,
  deviceSize: number,
  o: CommonBackupOptions,
  dataImage: string | undefined,
  unsound: (b: BackupSummary) => Promise<boolean>,
): Promise<{ backup: BackupSummary; devId: number } | null> {
  for (let i = candidates.length - 1; i >= 0; i--) {
    const b = candidates[i];
    const src = readSource(b.source);
    if (!src || b.chunkSize !== chunkSize || b.deviceSize !== deviceSize) continue;
    // Another data image (same metadata bytes, other data): its chunks are not this image's.
    if (dataImage !== undefined && typeof src.dataImage === 'string' && src.dataImage !== dataImage) continue;
    throwIfAborted(o.signal);
    const d = await md.deviceDetails(src.devId);
    if (!d) continue;
    const pool = poolId ?? (await offlinePoolId(md, d.devId, o.signal));
    if (identityKey(identityOf(pool, d)) !== src.identity) continue;
    if (typeof src.mappingRoot === 'string' && src.mappingRoot !== (await mappingRootDigest(md, d.devId, o.signal))) {
      o.onWarning?.(
        `thin ${d.devId}, the snapshot backup ${b.id} was taken from, has been written since (its mappings changed, or the pool's metadata was rebuilt, e.g. by thin_repair): not used as a base. Snapshots that are backed up must not be written; make them read-only`,
      );
      continue;
    }
    if (await unsound(b)) continue;
    return { backup: b, devId: d.devId };
  }
  return null;
}

/** What the metadata walk decided: the header to commit and the extents to read. */
interface Plan {
  source: BackupSource;
  base: BackupSummary | null;
  /** Data extents are read; zero extents are holes; blocks in neither keep the base's entries. */
  extents: AsyncIterable<SendExtent>;
  blockBytes: number;
  dataBlocksToRead?: number;
}

/** Plans against the open metadata: finds the base, then the extents (planSend: the mappings, or the delta). */
async function plan(
  md: ThinMetadata,
  o: CommonBackupOptions,
  candidates: readonly BackupSummary[],
  poolId: string | undefined,
  deviceSize: number,
  addressing: 'virtual' | 'data',
  unsound: (b: BackupSummary) => Promise<boolean>,
  dataImage?: string,
): Promise<Plan> {
  const blockBytes = md.superblock.dataBlockSize * SECTOR_SIZE;
  const chunkSize = chunkSizeFor(blockBytes);
  const found = o.full ? null : await findBase(md, candidates, poolId, chunkSize, deviceSize, o, dataImage, unsound);
  const onProgress = (): void => o.onProgress?.({ phase: 'metadata', chunksRead: 0, bytesRead: 0, bytesUploaded: 0 });
  if (found && found.devId === o.snap) {
    // The very snapshot backed up before: nothing changed.
    const snapDetails = (await md.deviceDetails(o.snap))!;
    const pool = poolId ?? (await offlinePoolId(md, o.snap, o.signal));
    const mappingRoot = await mappingRootDigest(md, o.snap, o.signal);
    return { source: sourceOf(identityOf(pool, snapDetails), md.superblock.dataBlockSize, mappingRoot, dataImage), base: found.backup, extents: empty(), blockBytes, dataBlocksToRead: 0 };
  }
  const p = await planSend(md, { snap: o.snap, base: found?.devId, poolId, deviceSize, addressing, signal: o.signal, onProgress });
  const mappingRoot = p.header.targetRoot ?? (await mappingRootDigest(md, o.snap, o.signal));
  return { source: sourceOf(p.header.target, md.superblock.dataBlockSize, mappingRoot, dataImage), base: found?.backup ?? null, extents: p.extents, blockBytes };
}

async function* empty(): AsyncGenerator<SendExtent> {}

/** Backs up a thin snapshot into a repository: incremental against the newest usable backup of the volume. */
export async function backup(opts: BackupOptions): Promise<BackupResult> {
  check.required(opts, 'backup');
  check.nameOr(opts.repo, 'repo', Repository);
  if ('pool' in opts) check.nameOr(opts.pool, 'pool', ThinPool);
  check.signal(opts.signal);
  check.callback(opts.onProgress, 'onProgress');
  check.callback(opts.onWarning, 'onWarning');
  for (const k of ['concurrency', 'uploads', 'batchBytes'] as const) if (opts[k] !== undefined) check.integer(opts[k], k);
  if (!('pool' in opts)) {
    // Named here: opened later, a missing one was the native open's signature (data) or "path" (metadata).
    check.string(opts.metadata, 'metadata');
    check.string(opts.data, 'data');
  }
  if ((opts as { poolId?: unknown }).poolId === '') throw new UsageError(EMPTY_POOL_ID);
  if (!VOLUME.test(opts.volume)) throw new UsageError(`bad volume name '${opts.volume}': use 1 to 128 of A-Z a-z 0-9 . _ -`);
  if (!Number.isSafeInteger(opts.snap) || opts.snap < 0) throw new UsageError(`bad snapshot device id ${opts.snap}`);
  if (opts.deviceSize !== undefined && (!Number.isSafeInteger(opts.deviceSize) || opts.deviceSize < 0 || opts.deviceSize % SECTOR_SIZE !== 0)) {
    throw new UsageError(`device size ${opts.deviceSize} is not a whole number of 512-byte sectors`);
  }
  const owned = typeof opts.repo === 'string';
  const repo = typeof opts.repo === 'string' ? await Repository.open(opts.repo, { key: opts.key, signal: opts.signal }) : opts.repo;
  try {
    // A base can be deleted (prune) between listing it and reading its map: plan
    // again against the backups that are left, and after two such losses take a full backup.
    for (let lost = 0; ; lost++) {
      const o = lost >= 2 ? { ...opts, full: true } : opts;
      try {
        // Chunks verify --repair removed and no backup has stored again (usually none: one listing);
        // read again under the session's lock before anything is stored (store()).
        const removed = await repo.removedChunks({ signal: opts.signal });
        return 'pool' in o ? await fromPool(repo, o, removed) : await fromImage(repo, o, removed);
      } catch (e) {
        // The only map a backup reads is its base's: say how to get past it.
        if (e instanceof RepoError && (e.reason === 'corrupt' || e.reason === 'format') && e.key?.startsWith('maps/')) {
          const base = e.key.slice('maps/'.length).split('#')[0];
          e.message += `; it is the base of this incremental backup: take a full backup (option full), which does not read it, or delete that backup (dmthin backups delete --repo ${repo.location} --backup ${base})`;
        }
        if (!(e instanceof BaseGone)) throw e;
      }
    }
  } finally {
    if (owned) await repo.close();
  }
}

async function fromImage(repo: Repository, o: ImageBackupOptions, removed: ReadonlySet<string>): Promise<BackupResult> {
  if (o.deviceSize === undefined) {
    throw new UsageError(`the size of thin device ${o.snap} is not recorded in pool metadata, and a data device image does not tell it: give its size in bytes (option deviceSize)`, {
      devId: o.snap,
      option: 'deviceSize',
    });
  }
  const started = Date.now();
  const candidates = await readableBackups(repo, o);
  const md = await ThinMetadata.open(o.metadata, { metadataSnap: o.metadataSnap });
  try {
    const source = await NativeDataSource.open(o.data, { addressing: 'data' });
    try {
      // Without a pool id given, the pool is known by its metadata alone: the data image is part of what the snapshot is.
      const unsound = (b: BackupSummary) => namesRemoved(repo, b, removed, o);
      const p = await plan(md, o, candidates, o.poolId, o.deviceSize, 'data', unsound, o.poolId === undefined ? (targetIdentity(o.data) ?? undefined) : undefined);
      return await store(repo, p, source, o.deviceSize, o, started, removed);
    } finally {
      await source.close();
    }
  } finally {
    await md.close();
  }
}

async function fromPool(repo: Repository, o: PoolBackupOptions, removed: ReadonlySet<string>): Promise<BackupResult> {
  const started = Date.now();
  const pool = typeof o.pool === 'string' ? await ThinPool.open(o.pool) : o.pool;
  const thin = await liveThin(pool, o.snap, {
    poolId: o.poolId,
    deviceSize: o.deviceSize,
    again: 'back up',
    unknownSize: () =>
      new UsageError(`thin device ${o.snap} of pool ${pool.name} is not active, so its size is unknown: activate it, or give its size in bytes (option deviceSize)`, {
        devId: o.snap,
        option: 'deviceSize',
      }),
  });
  const size = thin.deviceSize;
  const candidates = await readableBackups(repo, o);

  await using extents = new ExtentStore({ tmpDir: o.tmpDir });
  // The metadata snapshot is held for the walk only (withMetadataSnapshot releases it on every path).
  const p = await withMetadataSnapshot(pool, async (md) => {
    const x = await plan(md, o, candidates, thin.poolId, size, 'virtual', (b) => namesRemoved(repo, b, removed, o));
    for await (const e of x.extents) await extents.add(e);
    await extents.seal();
    return { ...x, extents: extents as AsyncIterable<SendExtent>, dataBlocksToRead: x.dataBlocksToRead ?? extents.totals.dataBlocks };
  }, { signal: o.signal });
  throwIfAborted(o.signal);
  return withThinData(pool, o.snap, thin, { prefix: 'dmthin-backup', readNothing: size === 0 || p.dataBlocksToRead === 0, nothing: nothingToRead }, (source) =>
    store(repo, p, source, size, o, started, removed),
  );
}

/**
 * The volume's backups whose header reads. One that does not (its volume is
 * unknown) is skipped with a warning: the base is then an older backup, or
 * none (a full read), never a guess.
 */
function readableBackups(repo: Repository, o: CommonBackupOptions): Promise<BackupSummary[]> {
  return repo.listBackups({
    volume: o.volume,
    signal: o.signal,
    onDamaged: (d) =>
      o.onWarning?.(`backup ${d.id} cannot be read (${d.error.message}); skipped, not used as a base: delete it with dmthin backups delete --repo ${repo.location} --backup ${d.id}`),
  });
}

/**
 * Whether backup `b` names a chunk a repair removed (`removed`: the markers):
 * such a base would pass the hole on, exit 0. Asked only of the base a
 * backup would take, newest first (a manifest read each), and only while
 * markers exist.
 */
async function namesRemoved(repo: Repository, b: BackupSummary, removed: ReadonlySet<string>, o: CommonBackupOptions): Promise<boolean> {
  if (removed.size === 0 || !(await repo.namesAnyChunk(b.id, removed, { signal: o.signal }))) return false;
  o.onWarning?.(
    `backup ${b.id} names a chunk that verify --repair removed: not used as a base (this backup reads what it needs itself, and stores such chunks again where its data still holds them, which makes the backups naming them whole again)`,
  );
  return true;
}

/**
 * After a committed backup: the removed chunks it stored again are whole
 * again, and so are the backups naming them. Best effort: the backup stands
 * either way (a marker left only costs the next backup its base).
 */
async function clearMarkers(repo: Repository, restored: ReadonlySet<string>, o: CommonBackupOptions): Promise<void> {
  try {
    await repo.clearRemovedMarkers(restored, { signal: o.signal });
  } catch (e) {
    o.onWarning?.(`the backup is committed, but the repository's record of chunks verify --repair removed could not be updated (${(e as Error).message}): the next backup may read more than it needs`);
  }
}

/** The base chosen by the plan was deleted before its map could be read (nothing read or stored yet): plan again. */
class BaseGone extends Error {}

/** The base's entries, its map already opened and its first frame read, so that a deleted base shows here. */
async function openBase(repo: Repository, id: string, signal?: AbortSignal): Promise<AsyncIterator<ManifestEntry>> {
  try {
    const it = (await repo.readManifest(id, { signal })).entries[Symbol.asyncIterator]();
    let first: IteratorResult<ManifestEntry> | null = await it.next();
    return {
      next: () => {
        if (!first) return it.next();
        const r = first;
        first = null;
        return Promise.resolve(r);
      },
      return: (v?: unknown) => (it.return ? it.return(v) : Promise.resolve({ done: true as const, value: v })),
    };
  } catch (e) {
    if (e instanceof RepoError && e.reason === 'not-found') throw new BaseGone(id);
    throw e;
  }
}

const nothingToRead: DataSource = {
  addressing: 'virtual',
  readBlocks: () => Promise.reject(new DmthinError('EIO', 'nothing to read: no block of the snapshot changed')),
};

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** One chunk to read: its index and where its bytes are in the data source. */
interface ReadItem {
  index: number;
  src: number;
  len: number;
}

/** A slot of the manifest, in index order: known at once (copied), or after its batch. */
type Slot = { kind: 'entry'; entry: ManifestEntry } | { kind: 'batch'; done: Promise<(ManifestEntry | null)[]> };

/**
 * Reads, stores and commits. The manifest's entries are produced in index
 * order while the chunks are stored: a batch's entries are yielded only once
 * each of its chunks is stored, and the manifest is complete (committed)
 * only after the last one.
 */
async function store(repo: Repository, p: Plan, source: DataSource, deviceSize: number, o: CommonBackupOptions, started: number, removed: ReadonlySet<string>): Promise<BackupResult> {
  const bs = p.blockBytes;
  const cs = chunkSizeFor(bs);
  const perBlock = bs / cs;
  const nChunks = Math.ceil(deviceSize / cs);
  const batchMax = Math.max(o.batchBytes ?? 8 << 20, cs);
  const inFlight = Math.max(1, o.concurrency ?? 4);
  const stats = { chunksRead: 0, chunksNew: 0, dedup: 0, fromBase: 0, zero: 0, bytesRead: 0, bytesUploaded: 0, entries: 0 };
  const chunksToRead = p.dataBlocksToRead !== undefined ? Math.min(p.dataBlocksToRead * perBlock, nChunks) : undefined;
  // The closing call repeats nothing: an event only when a count moved.
  let told = '';
  const progress = (): void => {
    const now = `${stats.chunksRead}/${stats.bytesRead}/${stats.bytesUploaded}`;
    if (now === told) return;
    told = now;
    o.onProgress?.({ phase: 'data', chunksRead: stats.chunksRead, chunksToRead, bytesRead: stats.bytesRead, bytesUploaded: stats.bytesUploaded });
  };
  const kill = killAfterCount(); // test seam (ops/test-seams.ts)

  await using session: BackupSession = await repo.beginBackup(o.volume, { signal: o.signal, onWarning: o.onWarning });
  // A repair between the plan and the session's lock (its exclusive lock excludes the session's) may have
  // removed a chunk the base names: nothing is stored yet, so plan again against the markers as they are now.
  const fresh = [...session.markedIds].filter((id) => !removed.has(id));
  if (p.base && fresh.length > 0 && (await repo.namesAnyChunk(p.base.id, new Set(fresh), { signal: o.signal }))) throw new BaseGone();
  // Ids stored by this run (or in flight): a chunk repeated in the volume is put once.
  const putting = new Map<string, Promise<void>>();
  const stored = new Set<string>();

  const uploads = Math.max(1, o.uploads ?? chunksAtOnce(cs));
  allowListeners(o.signal, uploads + inFlight);
  const slots = new Semaphore(uploads);
  const putOne = async (plain: Buffer): Promise<string> => {
    const id = repo.chunkId(plain);
    if (session.resumedIds.has(id) || stored.has(id)) {
      stats.dedup++;
      return id;
    }
    const pending = putting.get(id);
    if (pending) {
      stats.dedup++;
      await pending;
      return id;
    }
    const put = slots.run(() => session.putChunk(plain, { signal: o.signal, id })).then((r) => {
      if (r.id !== id) throw new DmthinError('EIO', `the repository named chunk ${r.id} where ${id} was expected`);
      if (r.stored) {
        stats.chunksNew++;
        stats.bytesUploaded += r.storedBytes;
        if (kill !== undefined && stats.chunksNew >= kill) process.kill(process.pid, 'SIGKILL');
      } else stats.dedup++;
      stored.add(id);
    });
    putting.set(id, put);
    try {
      await put;
    } finally {
      putting.delete(id);
    }
    return id;
  };

  const runBatch = async (items: ReadItem[]): Promise<(ManifestEntry | null)[]> => {
    let unit = 0;
    for (const it of items) unit = gcd(gcd(unit, it.src), it.len);
    unit = gcd(unit, 1 << 30);
    const blocks: number[] = [];
    for (const it of items) for (let u = it.src / unit, n = it.len / unit; n > 0; n--) blocks.push(u++);
    const data = await readBlocksExactly(source, unit, blocks);
    throwIfAborted(o.signal);
    let at = 0;
    const out = await Promise.all(
      items.map(async (it) => {
        const plain = data.subarray(at, (at += it.len));
        stats.chunksRead++;
        stats.bytesRead += it.len;
        if (isZero(plain)) {
          stats.zero++;
          return null;
        }
        return { index: it.index, id: await putOne(plain) };
      }),
    );
    progress();
    return out;
  };

  const baseEntries = p.base ? await openBase(repo, p.base.id, o.signal) : null;
  let nextBase: ManifestEntry | null | undefined; // undefined: not fetched yet; null: exhausted
  const peekBase = async (): Promise<ManifestEntry | null> => {
    if (!baseEntries) return null;
    if (nextBase === undefined) {
      const r = await baseEntries.next();
      nextBase = r.done ? null : r.value;
    }
    return nextBase;
  };

  async function* entries(): AsyncGenerator<ManifestEntry> {
    const queue: Slot[] = [];
    let batches = 0;
    let batch: ReadItem[] = [];
    let batchBytes = 0;
    let cursor = 0; // chunks below it are decided

    const seal = (): void => {
      if (batch.length === 0) return;
      const done = runBatch(batch);
      done.catch(() => undefined); // awaited in order below
      queue.push({ kind: 'batch', done });
      batches++;
      batch = [];
      batchBytes = 0;
    };
    async function* drain(keepBatches: number): AsyncGenerator<ManifestEntry> {
      while (queue.length > 0 && (batches > keepBatches || queue.length > 65536)) {
        const s = queue.shift()!;
        if (s.kind === 'entry') {
          yield s.entry;
          continue;
        }
        batches--;
        for (const e of await s.done) if (e) yield e;
      }
    }
    /** Base entries of chunks [cursor, to): unchanged. */
    const copyUntil = async (to: number): Promise<void> => {
      for (let b = await peekBase(); b && b.index < to; b = await peekBase()) {
        if (b.index >= cursor) {
          seal(); // the reads before it come first in the manifest
          // The entry as read: the session's commit takes it without looking its chunk up.
          queue.push({ kind: 'entry', entry: b });
          stats.fromBase++;
        }
        nextBase = undefined;
      }
      cursor = Math.max(cursor, to);
    };
    /** Base entries of chunks [cursor, to) are dropped: changed or holes now. */
    const skipUntil = async (to: number): Promise<void> => {
      for (let b = await peekBase(); b && b.index < to; b = await peekBase()) nextBase = undefined;
      cursor = Math.max(cursor, to);
    };

    for await (const e of p.extents) {
      throwIfAborted(o.signal);
      const first = e.begin * perBlock;
      const end = Math.min((e.begin + e.length) * perBlock, nChunks);
      await copyUntil(first);
      if (e.kind === 'zero') {
        await skipUntil(end);
        continue;
      }
      await skipUntil(end);
      for (let i = first; i < end; i++) {
        const block = Math.floor(i / perBlock);
        const len = Math.min(cs, deviceSize - i * cs);
        batch.push({ index: i, src: (e.source + (block - e.begin)) * bs + (i - block * perBlock) * cs, len });
        batchBytes += len;
        if (batchBytes + cs > batchMax) {
          seal();
          yield* drain(inFlight - 1);
        }
      }
    }
    await copyUntil(nChunks);
    seal();
    yield* drain(0);
    yield* drainAll(queue);
  }
  async function* drainAll(queue: Slot[]): AsyncGenerator<ManifestEntry> {
    for (const s of queue.splice(0)) {
      if (s.kind === 'entry') yield s.entry;
      else for (const e of await s.done) if (e) yield e;
    }
  }

  const counted = async function* (): AsyncGenerator<ManifestEntry> {
    for await (const e of entries()) {
      stats.entries++;
      yield e;
    }
  };
  const header: ManifestHeader = {
    volume: o.volume,
    deviceSize,
    chunkSize: cs,
    createdMs: started,
    source: p.source as unknown as Record<string, unknown>,
    base: p.base?.id ?? null,
  };
  let summary: BackupSummary;
  try {
    summary = await session.commit(header, counted(), { signal: o.signal });
  } finally {
    // A failure part-way leaves the base's manifest stream open: close it.
    await baseEntries?.return?.().catch(() => undefined);
  }
  // Committed: the removed chunks it wrote again are sound, and so are the backups naming them.
  if (session.restoredMarked.size > 0) await clearMarkers(repo, session.restoredMarked, o);
  progress();
  return {
    id: summary.id,
    volume: o.volume,
    base: header.base,
    deviceSize,
    chunkSize: cs,
    chunks: stats.entries,
    chunksRead: stats.chunksRead,
    chunksNew: stats.chunksNew,
    chunksDeduplicated: stats.dedup,
    chunksFromBase: stats.fromBase,
    zeroChunks: stats.zero,
    bytesRead: stats.bytesRead,
    bytesUploaded: stats.bytesUploaded,
    source: p.source,
    durationMs: Date.now() - started,
  };
}

const ZEROS = Buffer.alloc(MAX_CHUNK_BYTES);

/** All zero bytes? (Such a chunk is a hole: restore makes it read as zeros.) */
function isZero(b: Uint8Array): boolean {
  for (let off = 0; off < b.length; off += ZEROS.length) {
    const piece = b.subarray(off, Math.min(b.length, off + ZEROS.length));
    if (Buffer.compare(piece, ZEROS.subarray(0, piece.length)) !== 0) return false;
  }
  return true;
}
