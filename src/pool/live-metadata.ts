/**
 * Reading a live pool's mappings safely, as functions over ThinPool.openMetadata():
 * reserve the metadata snapshot, read through it, release it — also when the
 * reader throws, is aborted or stops iterating early. (While it is held the
 * release guard also releases it on SIGINT/SIGTERM/SIGHUP and at exit.)
 */
import { check } from '../errors';
import { ThinPool } from './thin-pool';
import type { DeltaExtent, DeltaOptions } from '../thin/delta';
import { staleOr, type ThinMetadata } from '../thin/metadata';

/**
 * Runs `fn` on the pool's metadata as of now; the snapshot is released when
 * it settles. `signal` also ends the wait for a snapshot another dmthin holds.
 * Rejects with MetadataSnapError ESTALE, not fn's result, when something
 * else released the snapshot while fn read it (LiveMetadata.verify).
 */
export async function withMetadataSnapshot<T>(pool: ThinPool, fn: (md: ThinMetadata) => Promise<T>, opts: { signal?: AbortSignal } = {}): Promise<T> {
  check.instance(pool, ThinPool, 'pool');
  check.func(fn, 'fn');
  opts = check.walk(opts, 'withMetadataSnapshot options');
  await using live = await pool.openMetadata({ signal: opts.signal });
  let result: T;
  try {
    result = await fn(live.metadata);
  } catch (e) {
    throw await staleOr(live, e);
  }
  // Released by someone else meanwhile: what fn read may be reused blocks (LiveMetadata.verify).
  await live.verify();
  return result;
}

/** `pool.changedBlocks(baseId, snapId)` as a function (see ThinPool.changedBlocks). */
export function changedBlocks(pool: ThinPool, baseId: number, snapId: number, opts: DeltaOptions = {}): AsyncGenerator<DeltaExtent> {
  check.instance(pool, ThinPool, 'pool');
  return pool.changedBlocks(baseId, snapId, opts);
}
