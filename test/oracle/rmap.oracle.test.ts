/**
 * dmthin rmap against thin_rmap 0.9.0 (test/fixtures/ORACLE-NOTES.md §7).
 *
 * thin_rmap 0.9.0 reports a btree node shared by several devices only under
 * the first of them (§7.2); dmthin reports every device. So the reference
 * output is thin_rmap's on the same mappings restored without sharing
 * (thin_dump | thin_restore into a larger file): dmthin on the original image
 * must print exactly that, and also exactly thin_rmap's output on the original
 * wherever thin_rmap agrees with itself on both.
 */
import { hashCli, hashOutput, runCli } from '../cli/run-cli';
import {
  describeOracle,
  fixtureImage,
  kernelFixtureImage,
  largeImage,
  listFixtures,
  listKernelFixtures,
  oraclePath,
  runOracle,
  restoreFlat,
  tempImage,
  type TempFile,
} from '../helpers/fixtures';

const U64_MAX = '18446744073709551615';

interface Img {
  name: string;
  image: () => Buffer;
  size: number;
  nrDataBlocks: number;
  held: boolean;
}

const images: Img[] = [
  ...listFixtures().map((f) => ({ name: f.name, image: () => fixtureImage(f.name), size: f.size, nrDataBlocks: f.nrDataBlocks, held: !!f.heldRoot })),
  ...listKernelFixtures().map((f) => ({ name: f.name, image: () => kernelFixtureImage(f.name), size: f.size, nrDataBlocks: f.nrDataBlocks, held: f.heldRoot !== null })),
];

/** Region sets for an image of nr data blocks: whole, partial, several overlapping/touching, beyond the end, one block. */
function regionSets(nr: number): [string, string[]][] {
  const q = Math.max(1, Math.floor(nr / 4));
  const h = Math.floor(nr / 2);
  return [
    ['whole range', [`0..${U64_MAX}`]],
    ['first third', [`0..${Math.max(1, Math.ceil(nr / 3))}`]],
    ['a middle range', [`${q}..${h + 7}`]],
    ['several, overlapping and touching', ['0..10', '5..20', '20..30', `${Math.max(0, nr - 50)}..${nr}`, `${h}..${h + 1}`, `${q + 3}..${q + 40}`]],
    ['beyond the end', [`${nr}..${nr + 1000}`]],
    ['one block', [`${h}..${h + 1}`]],
  ];
}
const args = (rs: string[]) => rs.flatMap((r) => ['--region', r]);

let sharedDiffers = 0;

/** The environment with rmap's in-memory bound lowered to n runs (the rest go to a temporary file). */
const runsInMemory = (n: number): NodeJS.ProcessEnv => ({ ...process.env, DMTHIN_RMAP_RUNS_IN_MEMORY: String(n) });

describeOracle('rmap equals thin_rmap 0.9.0 on every fixture and kernel image', () => {
  test('there are images', () => expect(images.length).toBeGreaterThanOrEqual(12));

  describe.each(images.map((i) => [i.name, i] as const))('%s', (name, im) => {
    let img: TempFile;
    let flat: TempFile;
    beforeAll(() => {
      img = tempImage(im.image(), `${name}.bin`);
      const xml = runOracle('thin_dump', [img.path]);
      expect(xml.status).toBe(0);
      flat = restoreFlat(xml.stdout, im.size, name);
    });
    afterAll(() => {
      img.cleanup();
      flat.cleanup();
    });

    test.each(regionSets(im.nrDataBlocks))('%s', (what, rs) => {
      const ref = runOracle('thin_rmap', [...args(rs), flat.path]);
      expect(ref.status).toBe(0);
      const ours = runCli(['rmap', ...args(rs), img.path]);
      expect({ status: ours.status, stderr: ours.stderr }).toEqual({ status: 0, stderr: '' });
      expect(ours.stdout).toBe(ref.stdout);
      // The same with the runs spilled to a temporary file past 16 in memory
      // (src/thin/rmap-runs.ts), for the two sets with the most runs: a CLI
      // start per set and image is a third of this file's time.
      if (what === 'whole range' || what.startsWith('several')) {
        expect(runCli(['rmap', ...args(rs), img.path], { env: runsInMemory(16) })).toMatchObject({ status: 0, stdout: ref.stdout, stderr: '' });
      }
      const direct = runOracle('thin_rmap', [...args(rs), img.path]);
      expect(direct.status).toBe(0);
      if (direct.stdout !== ref.stdout) {
        // Only the shared-node omission of §7.2: 0.9.0 prints fewer lines, never others' data.
        sharedDiffers++;
        expect(direct.stdout.split('\n').length).toBeLessThan(ref.stdout.split('\n').length);
      }
    });

    if (im.held) {
      test('-m: the held snapshot, as thin_rmap reads its trees restored from thin_dump -m', () => {
        const xml = runOracle('thin_dump', ['-m', img.path]);
        expect(xml.status).toBe(0);
        using heldFlat = restoreFlat(xml.stdout.replace('nr_data_blocks="0"', `nr_data_blocks="${im.nrDataBlocks}"`), im.size, `${name}-held`);
        for (const [, rs] of regionSets(im.nrDataBlocks)) {
          const ref = runOracle('thin_rmap', [...args(rs), heldFlat.path]);
          const ours = runCli(['rmap', '-m', ...args(rs), img.path]);
          expect({ rs, status: ours.status, stdout: ours.stdout }).toEqual({ rs, status: 0, stdout: ref.stdout });
        }
        // ...and it is the snapshot, not the live trees (where thin_dump sees them differ).
        const liveXml = runOracle('thin_dump', [img.path]).stdout.replace(/^<superblock[^\n]*\n/, '');
        const treesDiffer = xml.stdout.replace(/^<superblock[^\n]*\n/, '') !== liveXml;
        const whole = (m: string[]) => runCli(['rmap', ...m, '--region', `0..${U64_MAX}`, img.path]).stdout;
        expect(whole(['-m']) !== whole([])).toBe(treesDiffer);
      });
    }
  });

  test('0.9.0 drops shared nodes somewhere (the documented difference is real)', () => {
    expect(sharedDiffers).toBeGreaterThan(0);
  });
});

describeOracle('rmap arguments as thin_rmap 0.9.0 takes them', () => {
  let img: TempFile;
  beforeAll(() => {
    img = tempImage(fixtureImage('basic'), 'basic.bin');
  });
  afterAll(() => img.cleanup());

  const refusedByBoth = ['5..5', '6..5', '-1..5', 'abc', '5', '5.', '..5', '5 ..6', '0x10..20', '', '5..', '5..x', '5...6', '18446744073709551616..1', '0..18446744073709551616'];
  test.each(refusedByBoth)('region %p: rc 1 from both, one line on stderr', (r) => {
    const ref = runOracle('thin_rmap', ['--region', r, img.path]);
    expect(ref.status).toBe(1);
    expect(ref.stdout).toBe('');
    const ours = runCli(['rmap', '--region', r, img.path]);
    expect(ours.status).toBe(1);
    expect(ours.stdout).toBe('');
    expect(ours.stderr).toMatch(/^dmthin rmap: bad region '.*': .* \[EINVAL\]\n$/);
  });

  // thin_rmap accepts these and reads something else than was written (§7.3); dmthin refuses.
  const acceptedByOracle = ['5..45junk', '0..1e3', ' 5..45', '5.. 45', '+5..+45', '0..-1'];
  test.each(acceptedByOracle)('region %p: thin_rmap reads it loosely (rc 0), dmthin refuses (rc 1)', (r) => {
    expect(runOracle('thin_rmap', ['--region', r, img.path]).status).toBe(0);
    const ours = runCli(['rmap', '--region', r, img.path]);
    expect(ours.status).toBe(1);
    expect(ours.stderr).toMatch(/^dmthin rmap: bad region/);
    expect(ours.stderr.trim().split('\n')).toHaveLength(1);
  });

  test('0..2^64-1 and leading zeros are accepted by both, with equal output', () => {
    for (const r of [`0..${U64_MAX}`, '00..010']) {
      const ref = runOracle('thin_rmap', ['--region', r, img.path]);
      expect(runCli(['rmap', '--region', r, img.path])).toMatchObject({ status: 0, stdout: ref.stdout });
    }
  });

  test('runs that end at the last virtual block (2^64 - 1): the same bytes as thin_rmap (its u64 end wraps to 0)', () => {
    const top = 2n ** 64n;
    const xml = [
      '<superblock uuid="" time="0" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="100">',
      '<device dev_id="1" mapped_blocks="2" transaction="0" creation_time="0" snap_time="0">',
      `<single_mapping origin_block="${top - 2n}" data_block="1" time="0"/>`,
      `<single_mapping origin_block="${top - 1n}" data_block="0" time="0"/>`,
      '</device>',
      '<device dev_id="2" mapped_blocks="3" transaction="0" creation_time="0" snap_time="0">',
      `<range_mapping origin_begin="${top - 3n}" data_begin="10" length="3" time="0"/>`,
      '</device>',
      '</superblock>',
    ].join('\n');
    using im = restoreFlat(xml, 1 << 20, 'top-keys');
    const ref = runOracle('thin_rmap', ['--region', '0..100', im.path]);
    expect(ref).toMatchObject({ status: 0 });
    expect(ref.stdout).toContain(`thin(2) ${top - 3n}..0\n`);
    expect(runCli(['rmap', '--region', '0..100', im.path])).toMatchObject({ status: 0, stdout: ref.stdout });
  });

  test('no region: rc 1 from both', () => {
    expect(runOracle('thin_rmap', [img.path]).status).toBe(1);
    const ours = runCli(['rmap', img.path]);
    expect(ours.status).toBe(1);
    expect(ours.stderr).toMatch(/^dmthin rmap: no --region given/);
  });

  test('a missing file: rc 1 from both', () => {
    const missing = `${img.path}.missing/x`;
    expect(runOracle('thin_rmap', ['--region', '0..5', missing]).status).toBe(1);
    const ours = runCli(['rmap', '--region', '0..5', missing]);
    expect(ours.status).toBe(1);
    expect(ours.stderr.trim().split('\n')).toHaveLength(1);
  });

  test('a damaged mapping leaf: rc 1 from both, nothing on stdout', () => {
    const buf = fixtureImage('snapshots');
    buf[13 * 4096 + 100] ^= 0xff; // a mapping-tree node: its checksum no longer matches
    using bad = tempImage(buf, 'damaged.bin');
    const ref = runOracle('thin_rmap', ['--region', '0..100000', bad.path]);
    expect(ref).toMatchObject({ status: 1, stdout: '' });
    expect(ref.stderr).toMatch(/Damage in mapping tree/);
    const ours = runCli(['rmap', '--region', '0..100000', bad.path]);
    expect(ours.status).toBe(1);
    expect(ours.stderr).toMatch(/^dmthin rmap: bad checksum in btree node \(block 13, mapping tree of device \d+\)/);
  });
});

describeOracle('rmap on a generated image of at least 1,000,000 mappings', () => {
  let big: ReturnType<typeof largeImage>;
  beforeAll(() => {
    big = largeImage(1_000_000);
  }, 600_000);

  test('whole range and a partial range equal thin_rmap (sha256 of the output; no shared nodes in a restored image)', async () => {
    for (const r of [`0..${U64_MAX}`, `${Math.floor(big.nrDataBlocks / 3)}..${Math.floor(big.nrDataBlocks / 2)}`]) {
      const [ours, ref] = await Promise.all([hashCli(['rmap', '-q', '--region', r, big.path]), hashOutput(oraclePath('thin_rmap')!, ['--region', r, big.path])]);
      expect(ref.status).toBe(0);
      expect(ref.bytes).toBeGreaterThan(1000);
      expect(ours).toMatchObject({ status: 0, sha256: ref.sha256, bytes: ref.bytes });
      // Spilled: tens of thousands of runs sorted through a temporary file, 1,000 in memory at a time.
      expect(await hashCli(['rmap', '-q', '--region', r, big.path], undefined, runsInMemory(1000))).toMatchObject({ status: 0, sha256: ref.sha256, bytes: ref.bytes });
    }
  }, 600_000);
});


