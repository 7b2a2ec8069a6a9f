/**
 * Reading a live pool's mappings safely: reserve the metadata snapshot, read
 * through it, release it — also when the reader throws, is aborted or stops
 * iterating early. (While it is held the release guard also releases it on
 * SIGINT/SIGTERM/SIGHUP and at exit.)
 */
import type { ThinPool } from '../pool/thin-pool';
import type { DeltaExtent, DeltaOptions } from '../thin/delta';
import type { ThinMetadata } from '../thin/metadata';

/** Runs `fn` on the pool's metadata as of now; the snapshot is released when it settles. */
export async function withMetadataSnapshot<T>(pool: ThinPool, fn: (md: ThinMetadata) => Promise<T>): Promise<T> {
  const snap = await pool.reserveMetadataSnap();
  try {
    const md = await snap.open();
    try {
      return await fn(md);
    } finally {
      await md.close();
    }
  } finally {
    await snap.release();
  }
}

/**
 * Extents in which thin device `snapId` differs from `baseId` (`different`,
 * `left_only` = only in the base, `right_only` = only in the snapshot), in
 * virtual-block order, read through a metadata snapshot held for the walk.
 * Blocks both map the same are skipped unless `includeSame` is set.
 */
export async function* changedBlocks(pool: ThinPool, baseId: number, snapId: number, opts: DeltaOptions = {}): AsyncGenerator<DeltaExtent> {
  const snap = await pool.reserveMetadataSnap();
  try {
    const md = await snap.open();
    try {
      yield* md.delta(baseId, snapId, { includeSame: false, ...opts });
    } finally {
      await md.close();
    }
  } finally {
    await snap.release();
  }
}
