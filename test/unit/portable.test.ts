/**
 * The pure-JS stand-ins used when the addon does not load: CRC-32C against
 * the published check value and the addon's own (hardware or table) code, and
 * the portable reader against the addon's reader on a fixture image.
 */
import fc from 'fast-check';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SetupError } from '../../src/errors';
import { native } from '../../src/native/binding';
import { crc32cPortable, PortableBlockReader } from '../../src/native/portable';
import { fixtureFile, type TempFile } from '../helpers/fixtures';

const unavailable = new SetupError('no-native-addon', 'MODULE_NOT_FOUND', 'stand-in');

test('CRC-32C check value: "123456789" -> 0xE3069283', () => {
  expect(crc32cPortable(Buffer.from('123456789'))).toBe(0xe3069283);
});

test('same values as the addon, standard and raw with a seed, on any bytes', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 5000 }), fc.integer({ min: 0, max: 0xffffffff }), (data, seed) => {
      expect(crc32cPortable(data)).toBe(native().crc32c(data) >>> 0);
      expect(crc32cPortable(data, seed, true)).toBe(native().crc32c(data, seed, true) >>> 0);
      expect(crc32cPortable(data, seed)).toBe(native().crc32c(data, seed) >>> 0);
    }),
    { numRuns: 300 },
  );
});

describe('PortableBlockReader', () => {
  let img: TempFile;
  beforeAll(() => {
    img = fixtureFile('shared-subtree');
  });
  afterAll(() => img.cleanup());

  test('reads the blocks and CRCs the addon reads, in request order with repeats', async () => {
    const p = new PortableBlockReader(unavailable);
    const n = new (native().BlockReader)();
    const [pi, ni] = [await p.open(img.path), await n.open(img.path, 'auto', false)];
    expect(pi.size).toBe(ni.size);
    expect(pi.blockDevice).toBe(false);
    const blocks = Float64Array.from([3, 0, 1, 3, 2]);
    const [a, b] = [await p.read(4096, blocks, true), await n.read(4096, blocks, true)];
    expect(Buffer.compare(a.data, b.data)).toBe(0);
    expect(Array.from(a.crcs!)).toEqual(Array.from(b.crcs!));
    expect((await p.read(4096, blocks)).crcs).toBeUndefined();
    p.close();
    n.close();
  });

  test('a block beyond the end is EIO with the offset', async () => {
    const p = new PortableBlockReader(unavailable);
    const { size } = await p.open(img.path);
    const past = size / 4096;
    await expect(p.read(4096, Float64Array.from([past]))).rejects.toMatchObject({ code: 'EIO', syscall: 'read', path: img.path, offset: past * 4096 });
    p.close();
  });

  test('a directory is EINVAL, a missing path ENOENT, a block device the addon error', async () => {
    const d = mkdtempSync(join(tmpdir(), 'dmthin-portable-'));
    try {
      await expect(new PortableBlockReader(unavailable).open(d)).rejects.toMatchObject({ code: 'EINVAL', syscall: 'open', path: d });
      await expect(new PortableBlockReader(unavailable).open(join(d, 'absent'))).rejects.toMatchObject({ code: 'ENOENT' });
      if (process.getuid?.() === 0) {
        const { spawnSync } = await import('node:child_process');
        expect(spawnSync('mknod', [join(d, 'blk'), 'b', '7', '0']).status).toBe(0);
        await expect(new PortableBlockReader(unavailable).open(join(d, 'blk'))).rejects.toBe(unavailable);
      }
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});
