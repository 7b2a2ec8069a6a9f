/**
 * docs/metadata-format.md and the code agree: the constants, offsets and
 * vectors written in the document (from the kernel's sources and real
 * metadata, not from this code) are read out of its tables and compared with
 * what src/ uses. A change to either side that the other does not follow
 * fails here.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BlockType, blockChecksum, crc32c } from '../../src/pdata/checksum';
import { maxEntriesFor } from '../../src/pdata/btree';
import { Cmd, CMD_NAMES, Flag, IOCTL, MIN_VERSION, TARGET_SPEC } from '../../src/dm/ioctl';
import { MAX_THIN_ID, MAX_DATA_BLOCK_SIZE, MIN_DATA_BLOCK_SIZE, THIN_POOL_FEATURES, MAX_POOL_FEATURES } from '../../src/dm/targets/thin-pool';
import { THIN_SUPERBLOCK_MAGIC } from '../../src/thin/superblock';
import { DEVICE_DETAILS_SIZE } from '../../src/thin/device-details';
import { mappingDataBlock, mappingTime } from '../../src/thin/mapping-value';

const DOC = readFileSync(join(__dirname, '..', '..', 'docs', 'metadata-format.md'), 'utf8');

/** The text of section `n` ("## n." up to the next "## "). */
function section(n: number): string {
  const m = new RegExp(`^## ${n}\\. [^\\n]*\\n([\\s\\S]*?)(?=^## |$(?![\\s\\S]))`, 'm').exec(DOC);
  if (!m) throw new Error(`docs/metadata-format.md has no section ${n}`);
  return m[1];
}

/** Rows of the markdown tables in `text`, as trimmed cells (header and rule rows dropped). */
function rows(text: string): string[][] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith('|') && !/^\|[-| ]+\|$/.test(l))
    .map((l) => l.slice(1, -1).split('|').map((c) => c.trim()));
}

test('§1: the checksum constants per block kind', () => {
  const k = Object.fromEntries(rows(section(1)).filter((r) => /^\d+$/.test(r[1])).map((r) => [r[0].split(' ')[0], Number(r[1])]));
  expect(k).toEqual({
    superblock: BlockType.Superblock,
    'b-tree': BlockType.BtreeNode,
    'space-map': BlockType.Bitmap,
    'metadata': BlockType.MetadataIndex,
  });
});

test('§1: the test vectors', () => {
  const s = section(1);
  expect(s).toContain('`123456789` is `0xE3069283`');
  expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
  const zero = Buffer.alloc(4096);
  const vectors = [...s.matchAll(/`0x([0-9A-F]{8})` \(([a-z-]+(?: node| block)?)\)/g)].map((m) => [m[2], parseInt(m[1], 16)]);
  expect(Object.fromEntries(vectors)).toEqual({
    superblock: blockChecksum(zero, BlockType.Superblock),
    'b-tree node': blockChecksum(zero, BlockType.BtreeNode),
    bitmap: blockChecksum(zero, BlockType.Bitmap),
    'index block': blockChecksum(zero, BlockType.MetadataIndex),
  });
});

test('§2: magic, block sizes', () => {
  const s = section(2);
  expect(s).toContain(`| magic | ${THIN_SUPERBLOCK_MAGIC} (\`0x019C52BA\`) |`);
  expect(0x019c52ba).toBe(THIN_SUPERBLOCK_MAGIC);
  expect(s).toContain(`${MIN_DATA_BLOCK_SIZE} to ${MAX_DATA_BLOCK_SIZE}, a multiple of 128`);
});

test('§3: max_entries per value size, and where values start', () => {
  const table = rows(section(3)).filter((r) => r.length === 4 && /^\d+$/.test(r[0]));
  expect(table.map((r) => Number(r[0]))).toEqual([4, 8, 16, 24]);
  for (const [vs, , max, start] of table) {
    expect(Number(max)).toBe(maxEntriesFor(Number(vs)));
    expect(Number(start)).toBe(32 + 8 * maxEntriesFor(Number(vs)));
  }
});

test('§4 and §5: details record size, mapping value example', () => {
  expect(section(4)).toContain('the value 24 bytes');
  expect(DEVICE_DETAILS_SIZE).toBe(24);
  expect(section(5)).toContain('838860801 = `(50 << 24) | 1`: data block 50, time 1');
  const v = 838860801;
  expect([mappingDataBlock(v >>> 0, 0), mappingTime(v)]).toEqual([50, 1]);
});

test('§10: pool features, their limit, the thin id limit', () => {
  const s = section(10);
  const features = [...s.matchAll(/`([a-z_]+)`/g)].map((m) => m[1]).filter((w) => (THIN_POOL_FEATURES as readonly string[]).includes(w));
  expect(new Set(features)).toEqual(new Set(THIN_POOL_FEATURES));
  expect(s).toContain(`At most ${MAX_POOL_FEATURES} features`);
  expect(s).toContain('above 2^24 - 1');
  expect(MAX_THIN_ID).toBe(2 ** 24 - 1);
});

test('§11: struct dm_ioctl offsets', () => {
  const table = rows(section(11)).filter((r) => r.length === 3 && /^\d+$/.test(r[0]) && /^\d+$/.test(r[1]) && r[2] !== 'padding to 312');
  const doc = Object.fromEntries(table.map((r) => [r[2].split(/[ ,:]/)[0], Number(r[0])]));
  expect(doc).toEqual({
    version: IOCTL.version,
    data_size: IOCTL.data_size,
    data_start: IOCTL.data_start,
    target_count: IOCTL.target_count,
    open_count: IOCTL.open_count,
    flags: IOCTL.flags,
    event_nr: IOCTL.event_nr,
    padding: IOCTL.padding,
    dev: IOCTL.dev,
    name: IOCTL.name,
    uuid: IOCTL.uuid,
  });
  expect(section(11)).toContain(`\`struct dm_ioctl\`, ${IOCTL.size} bytes`);
  expect(section(11)).toContain(`\`dm_target_spec\` (${TARGET_SPEC.size} bytes): sector_start u64 at ${TARGET_SPEC.sector_start}, length u64 at ${TARGET_SPEC.length}, status
  s32 at ${TARGET_SPEC.status}, next u32 at ${TARGET_SPEC.next}, target type (16 bytes) at ${TARGET_SPEC.target_type}`);
});

test('§11: command numbers and the versions they need', () => {
  const cells = rows(section(11)).filter((r) => r.length === 4 && /^\d+$/.test(r[0]) && /^DM_/.test(r[1]));
  const doc = new Map<number, string>();
  for (const r of cells) {
    doc.set(Number(r[0]), r[1]);
    doc.set(Number(r[2]), r[3]);
  }
  expect(doc.size).toBe(CMD_NAMES.length);
  for (const [nr, text] of doc) {
    const [name, ver] = /^(\S+)(?: \((\d+\.\d+)\))?$/.exec(text)!.slice(1);
    expect(name).toBe(CMD_NAMES[nr]);
    const min = MIN_VERSION[nr as Cmd];
    expect(ver ?? '4.0').toBe(`${min[0]}.${min[1]}`);
  }
});

test('§11: flag bits', () => {
  const line = /Flags \(bit numbers\): ([\s\S]*?)\.\n/.exec(section(11))![1].replace(/\s+/g, ' ');
  const doc = Object.fromEntries(line.split(', ').map((p) => /^(\S+) (\d+)$/.exec(p)!.slice(1)).map(([k, b]) => [k, 1 << Number(b)]));
  expect(doc).toEqual(Flag);
});
