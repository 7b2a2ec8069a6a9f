/**
 * The native BlockWriter on a real block device (a loop device in the guest):
 * its size comes from BLKGETSIZE64, it holds the device with O_EXCL, zeroing
 * and discards use the block-device ioctls, and writes or growth past the end
 * are refused. The regular-file cases run on the host
 * (test/stream/block-writer.test.ts); this one needs root and a loop device,
 * which only the test VM guarantees.
 */
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { SystemCallError } from '../../src/errors';
import { BlockWriter } from '../../src/native/block-writer';
import { junkBytes } from '../stream/helpers';
import { describeVm, MiB, useDmSandbox } from './helpers';

async function refused(p: Promise<unknown>, code: string): Promise<void> {
  await expect(p).rejects.toBeInstanceOf(SystemCallError);
  await expect(p).rejects.toMatchObject({ code });
}

describeVm('BlockWriter on a loop device', () => {
  const sandbox = useDmSandbox('block-writer');

  test('size from BLKGETSIZE64, O_EXCL, BLKDISCARD/BLKZEROOUT, refuses beyond the end', async () => {
    const size = 8 * MiB;
    const loop = sandbox().loop(size, 'bw');
    // Junk first, so that zeroing has something to clear and stray writes would show.
    const fd = openSync(loop.path, 'r+');
    try {
      writeSync(fd, junkBytes(size));
    } finally {
      closeSync(fd);
    }
    const w = await BlockWriter.open(loop.path);
    try {
      expect(w.info).toMatchObject({ size, blockDevice: true });
      await refused(BlockWriter.open(loop.path), 'EBUSY'); // O_EXCL while we hold it
      await w.write([{ offset: 4096, data: Buffer.alloc(8192, 1) }, { offset: 512, data: Buffer.alloc(512, 5) }]);
      await refused(w.write([{ offset: size, data: Buffer.alloc(512) }]), 'ENOSPC');
      await refused(w.extend(2 * size), 'EINVAL');
      expect(['blkzeroout', 'written']).toContain(await w.zeroOut(1 * MiB, 1 * MiB));
      // A loop device may or may not pass discards down; whichever it does, the call must not fail another way.
      await w.discard(2 * MiB, 1 * MiB).catch((e: unknown) => expect(e).toBeInstanceOf(SystemCallError));
      await w.fsync();
    } finally {
      w.close();
    }
    const d = readFileSync(loop.path);
    const junk = junkBytes(size);
    expect([d[512], d[4096], d[12287]]).toEqual([5, 1, 1]);
    expect(d.subarray(1 * MiB, 2 * MiB).every((b) => b === 0)).toBe(true);
    // Outside what was written, zeroed or discarded, the device still holds the junk.
    expect(d.subarray(3 * MiB).equals(junk.subarray(3 * MiB))).toBe(true);
    expect(d.subarray(0, 512).equals(junk.subarray(0, 512))).toBe(true);
  });
});
