/**
 * ThinMetadata.snapshotChange() / verifySnapshot(): whether the metadata
 * snapshot a reader opened is still the one held, judged from the file or
 * device as it is now (block 0's held root, the copy byte for byte as
 * parsed at open), through a reader of its own (so also after close()).
 * Outside review: `-m` of a metadata device had no such check, and the
 * pool's check compared a copy read after the one parsed.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { MetadataSnapError, ThinMetadata } from '../../src';
import { seal, superblock } from '../helpers/corrupt';
import { fixtureFile, fixtureImage } from '../helpers/fixtures';

const BLOCK = 4096;

/** Rewrites block `b` of the file at `path` with `edit` applied, its checksum made valid again. */
function rewrite(path: string, b: number, edit: (blk: Buffer) => void): void {
  const fd = openSync(path, 'r+');
  try {
    const blk = Buffer.alloc(BLOCK);
    readSync(fd, blk, 0, BLOCK, b * BLOCK);
    edit(blk);
    seal(blk, 'superblock');
    writeSync(fd, blk, 0, BLOCK, b * BLOCK);
  } finally {
    closeSync(fd);
  }
}

describe('ThinMetadata.snapshotChange() and verifySnapshot()', () => {
  const held = superblock(fixtureImage('metadata-snap')).heldRoot;

  test('still held: null, verifySnapshot resolves, before and after close()', async () => {
    using f = fixtureFile('metadata-snap');
    const md = await ThinMetadata.open(f.path, { metadataSnap: true });
    expect(md.metadataSnap).toBe(held);
    expect(await md.snapshotChange()).toBeNull();
    await md.verifySnapshot();
    await md.close();
    expect(await md.snapshotChange()).toBeNull();
  });

  test.each([
    ['released (block 0 holds no root)', (b0: Buffer) => b0.writeBigUInt64LE(0n, 0x38), 'none is held now'],
    ['another reserved elsewhere (block 0 holds another root)', (b0: Buffer) => b0.writeBigUInt64LE(BigInt(held + 1), 0x38), `block ${held + 1} is held now`],
  ] as const)('%s: what is held now; verifySnapshot rejects with ESTALE naming the file, also after close()', async (_name, edit, what) => {
    using f = fixtureFile('metadata-snap');
    await using md = await ThinMetadata.open(f.path, { metadataSnap: true });
    rewrite(f.path, 0, edit);
    expect(await md.snapshotChange()).toBe(what);
    await expect(md.verifySnapshot()).rejects.toMatchObject({
      name: 'MetadataSnapError',
      code: 'ESTALE',
      path: f.path,
      block: held,
      message: `the metadata snapshot of ${f.path} at block ${held} was released while it was being read (${what}), by something other than this reader (such as 'dmsetup message POOL 0 release_metadata_snap'): the pool may have reused blocks it named, so what was read is not to be used. Run it again, and keep the snapshot held until it ends`,
    });
    await md.close();
    await expect(md.verifySnapshot()).rejects.toBeInstanceOf(MetadataSnapError);
  });

  test('another copy at the same block (released, then reserved again after a commit): told by its bytes', async () => {
    using f = fixtureFile('metadata-snap');
    await using md = await ThinMetadata.open(f.path, { metadataSnap: true });
    // The copy's transaction id (offset 0x30) moves on, as a new reserve after a commit writes it.
    rewrite(f.path, held, (b) => b.writeBigUInt64LE(b.readBigUInt64LE(0x30) + 1n, 0x30));
    expect(await md.snapshotChange()).toBe('another is held at the same block now');
    await expect(md.verifySnapshot()).rejects.toMatchObject({ code: 'ESTALE' });
  });

  test('nothing to tell: read without a snapshot, or from memory', async () => {
    using f = fixtureFile('metadata-snap');
    await using live = await ThinMetadata.open(f.path);
    expect(await live.snapshotChange()).toBeNull();
    await using mem = await ThinMetadata.fromBuffer(fixtureImage('metadata-snap'), { metadataSnap: true });
    expect(mem.metadataSnap).toBe(held);
    expect(await mem.snapshotChange()).toBeNull();
  });
});
