import { randomBytes } from 'node:crypto';
import { native } from '../../src/native/binding';
import { crc32cPortable } from '../../src/native/portable';
import { BlockType, blockChecksum, crc32c, verifyChecksum, blockTypeOf } from '../../src/pdata/checksum';
import { MemoryBlockSource } from '../../src/pdata/block-source';
import { MetadataError } from '../../src/errors';

// Vectors from docs/metadata-format.md §1 (checked there against blocks the kernel and the reference tools wrote).
describe('CRC-32C', () => {
  test('standard check value', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
  });

  test('hardware and table paths agree on random data', () => {
    const n = native();
    for (let len = 0; len < 300; len += 7) {
      const b = Buffer.alloc(len);
      for (let i = 0; i < len; i++) b[i] = (i * 131 + len) & 0xff;
      expect(n.crc32c(b) >>> 0).toBe(n.crc32cTable(b) >>> 0);
    }
  });

  test('three interleaved chains (lanes of 256 bytes and 8 KiB) join to the one-chain value: every length around the lanes, any alignment, any seed', () => {
    // The hardware path runs three chains over blocks of 3 x 256 and 3 x 8192
    // bytes and joins them; the table path is one chain a byte at a time.
    const n = native();
    const data = randomBytes(200_000);
    const lens = [767, 768, 769, 775, 776, 1535, 1536, 1543, 4092, 4096, 24575, 24576, 24577, 24576 + 768, 24576 + 767, 49152 + 1543, 199_990];
    for (let i = 0; i < 40; i++) lens.push(Math.floor(Math.random() * 199_990));
    for (const len of lens) {
      for (const off of [0, 1, 3, 4, 7]) {
        const b = data.subarray(off, off + len);
        const seed = (Math.random() * 2 ** 32) >>> 0;
        expect([len, off, n.crc32c(b) >>> 0]).toEqual([len, off, n.crc32cTable(b) >>> 0]);
        // Raw with any seed, against the pure-JS CRC (src/native/portable.ts).
        expect(n.crc32c(b, seed, true) >>> 0).toBe(crc32cPortable(b, seed, true) >>> 0);
      }
    }
    expect(n.crc32c(Buffer.alloc(1 << 20), 0, true) >>> 0).toBe(0); // zeros from a zero state stay zero
  });

  test.each([
    [BlockType.Superblock, 0x58cfd397],
    [BlockType.BtreeNode, 0x58cc7e82],
    [BlockType.Bitmap, 0x58ce0b1a],
    [BlockType.MetadataIndex, 0x58cfd54f],
  ])('zero block checksum for type %i', (type, want) => {
    expect(blockChecksum(Buffer.alloc(4096), type)).toBe(want);
  });
});

describe('block type by checksum', () => {
  async function blockWith(type: BlockType) {
    const b = Buffer.alloc(4096);
    b.fill(7, 100, 200);
    b.writeUInt32LE(blockChecksum(b, type), 0);
    const [blk] = await new MemoryBlockSource(b).read([0]);
    return blk;
  }

  test('accepts the expected type', async () => {
    const blk = await blockWith(BlockType.BtreeNode);
    expect(() => verifyChecksum(blk, BlockType.BtreeNode)).not.toThrow();
  });

  test('names the real type when another one was expected', async () => {
    const blk = await blockWith(BlockType.Bitmap);
    expect(blockTypeOf(blk)).toBe(BlockType.Bitmap);
    try {
      verifyChecksum(blk, BlockType.BtreeNode);
      throw new Error('no error');
    } catch (e) {
      expect(e).toBeInstanceOf(MetadataError);
      expect((e as MetadataError).kind).toBe('block-type');
      expect((e as MetadataError).code).toBe('EILSEQ');
      expect((e as Error).message).toMatch(/found a space-map bitmap/);
    }
  });

  test('a flipped byte is a checksum error', async () => {
    const b = Buffer.alloc(4096);
    b.writeUInt32LE(blockChecksum(b, BlockType.BtreeNode), 0);
    b[1000] ^= 1;
    const [blk] = await new MemoryBlockSource(b).read([0]);
    expect(() => verifyChecksum(blk, BlockType.BtreeNode)).toThrow(expect.objectContaining({ kind: 'checksum', code: 'EILSEQ', block: 0 }));
  });
});
