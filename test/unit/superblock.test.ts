import { MemoryBlockSource } from '../../src/pdata/block-source';
import { parseSuperblock } from '../../src/thin/superblock';
import { BlockType, blockChecksum } from '../../src/pdata/checksum';

// The superblock hexdump from docs/metadata-format.md §2 (a real pool's
// block 0; every byte not listed is zero; stored checksum 0xD88045AC).
function docSuperblock(): Buffer {
  const b = Buffer.alloc(4096);
  const rows: [number, string][] = [
    [0x000, 'ac4580d8000000000000000000000000'],
    [0x020, 'ba529c01000000000200000002000000'],
    [0x030, '07000000000000000000000000000000'],
    [0x040, 'e8030000000000000d00000000000000'],
    [0x050, '04000000000000000500000000000000'],
    [0x0c0, '00100000000000000c00000000000000'],
    [0x0d0, '01000000000000000200000000000000'],
    [0x140, '07000000000000000600000000000000'],
    [0x150, '80000000080000000010000000000000'],
  ];
  for (const [off, hex] of rows) Buffer.from(hex, 'hex').copy(b, off);
  return b;
}

test('parses the documented superblock and its checksum matches', async () => {
  const img = docSuperblock();
  expect(blockChecksum(img, BlockType.Superblock)).toBe(0xd88045ac);
  const [blk] = await new MemoryBlockSource(img).read([0]);
  const sb = parseSuperblock(blk);
  expect(sb).toMatchObject({
    version: 2,
    time: 2,
    transactionId: 7n,
    heldRoot: 0,
    dataMappingRoot: 7,
    deviceDetailsRoot: 6,
    dataBlockSize: 128,
    metadataBlockSize: 8,
    metadataNrBlocks: 4096n,
    needsCheck: false,
  });
  expect(sb.dataSpaceMap).toEqual({ nrBlocks: 1000, nrAllocated: 13, bitmapRoot: 4, refCountRoot: 5 });
  expect(sb.metadataSpaceMap).toEqual({ nrBlocks: 4096, nrAllocated: 12, bitmapRoot: 1, refCountRoot: 2 });
});

function withField(mut: (b: Buffer) => void): Buffer {
  const b = docSuperblock();
  mut(b);
  b.writeUInt32LE(blockChecksum(b, BlockType.Superblock), 0);
  return b;
}

test.each([
  ['magic', (b: Buffer) => b.writeUInt32LE(12345, 0x20), 'magic'],
  ['version 3', (b: Buffer) => b.writeUInt32LE(3, 0x28), 'version'],
  ['8 KiB metadata blocks', (b: Buffer) => b.writeUInt32LE(16, 0x154), 'block-size'],
  ['data block size 100', (b: Buffer) => b.writeUInt32LE(100, 0x150), 'block-size'],
  ['incompat flag', (b: Buffer) => b.writeUInt32LE(1, 0x168), 'feature-flags'],
  ['blocknr 5', (b: Buffer) => b.writeUInt32LE(5, 8), 'blocknr'],
])('rejects %s', async (_name, mut, kind) => {
  const [blk] = await new MemoryBlockSource(withField(mut)).read([0]);
  expect(() => parseSuperblock(blk)).toThrow(expect.objectContaining({ kind }));
});

test('an all-zero block 0 is reported as unformatted', async () => {
  const [blk] = await new MemoryBlockSource(Buffer.alloc(4096)).read([0]);
  expect(() => parseSuperblock(blk)).toThrow(/not formatted/);
});
