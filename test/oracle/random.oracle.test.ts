/**
 * Pools nobody wrote by hand: scripts/fixtures/random-pool.mjs makes one per
 * seed (random ids, mapping layouts, shared data blocks, block sizes and
 * 32/64-bit extremes through thin_restore; with --snapshots, shared subtrees
 * from emulated create_snap, writes and deletes; with --held, a held metadata
 * snapshot the pool then diverged from), and every read-only command
 * must print what thin_dump, thin_ls, thin_delta and thin_rmap 0.9.0 print on
 * it, with the same exit status; check must pass where thin_check passes;
 * delta --no-same, ls --json and dump -f json must say what the reference's
 * output says.
 * The choices each case makes (device pairs, fields, regions) come from its
 * seed too, so a failure names a seed that reproduces it:
 *   node scripts/fixtures/random-pool.mjs --seed N [--snapshots [--held]] --out x.bin
 * DMTHIN_RANDOM_POOLS=N runs N seeds of each kind (default 4, 2 and 2).
 */
import { readFileSync, statSync } from 'node:fs';
import { runCli } from '../cli/run-cli';
import { describeOracle, restoreFlat, runOracle, type TempFile } from '../helpers/fixtures';
import { makeRandomPool, RANDOM_POOL_ARGS, xmlAttrs, type RandomPool, type RandomPoolKind } from '../helpers/random-pool';
import { chooser } from '../helpers/seeded';

const FIELDS = [
  'DEV', 'MAPPED_BLOCKS', 'EXCLUSIVE_BLOCKS', 'SHARED_BLOCKS', 'MAPPED_SECTORS', 'EXCLUSIVE_SECTORS', 'SHARED_SECTORS',
  'MAPPED_BYTES', 'EXCLUSIVE_BYTES', 'SHARED_BYTES', 'MAPPED', 'EXCLUSIVE', 'SHARED', 'TRANSACTION', 'CREATE_TIME', 'SNAP_TIME',
];
const count = (fallback: number): number => Number(process.env.DMTHIN_RANDOM_POOLS ?? fallback);

/** Ours and the reference tool's stdout and exit status, side by side (a failure shows both). */
function expectSame(ours: string[], tool: string, ref: string[]): void {
  const a = runCli(ours);
  const b = runOracle(tool, ref);
  expect({ status: a.status, stdout: a.stdout }).toEqual({ status: b.status, stdout: b.stdout });
}

function cases(kind: RandomPoolKind, seeds: number[]): void {
  const snapshots = kind !== 'xml';
  describe.each(seeds.map((s) => [s]))(`seed %i ${RANDOM_POOL_ARGS[kind].join(' ')}`, (seed) => {
    let img: TempFile;
    let pool: RandomPool;
    const c = chooser(seed * 3 + ['xml', 'snap', 'held'].indexOf(kind));
    beforeAll(() => ({ img, pool } = makeRandomPool(seed, kind)));
    afterAll(() => img.cleanup());

    test('dump: xml, human_readable, --skip-mappings, --dev-id', () => {
      expectSame(['dump', img.path], 'thin_dump', [img.path]);
      expectSame(['dump', '-f', 'human_readable', img.path], 'thin_dump', ['-f', 'human_readable', img.path]);
      expectSame(['dump', '--skip-mappings', img.path], 'thin_dump', ['--skip-mappings', img.path]);
      const ids = [...(pool.devices.length ? [String(c.pick(pool.devices))] : []), String(c.int(0, 16777215))];
      const a = ids.flatMap((id) => ['--dev-id', id]);
      expectSame(['dump', ...a, img.path], 'thin_dump', [...a, img.path]);
    });

    test('ls: default fields, every field, a random subset without headers', () => {
      expectSame(['ls', img.path], 'thin_ls', [img.path]);
      expectSame(['ls', '-o', FIELDS.join(','), img.path], 'thin_ls', ['-o', FIELDS.join(','), img.path]);
      const some = FIELDS.filter(() => c.next() < 0.35);
      const f = (some.length ? some : ['SHARED']).join(',');
      expectSame(['ls', '--no-headers', '-o', f, img.path], 'thin_ls', ['--no-headers', '-o', f, img.path]);
    });

    test('delta: three device pairs, plain and --verbose', () => {
      if (!pool.devices.length) {
        expectSame(['delta', '--snap1', '0', '--snap2', '1', img.path], 'thin_delta', ['--snap1', '0', '--snap2', '1', img.path]);
        return;
      }
      for (let k = 0; k < 3; k++) {
        const a = ['--snap1', String(c.pick(pool.devices)), '--snap2', String(c.pick(pool.devices))];
        expectSame(['delta', ...a, img.path], 'thin_delta', [...a, img.path]);
        expectSame(['delta', '--verbose', ...a, img.path], 'thin_delta', ['--verbose', ...a, img.path]);
      }
    });

    test('rmap: random region sets', () => {
      // thin_rmap 0.9.0 names a shared subtree's blocks under its first device
      // only (ORACLE-NOTES.md §7.2); dmthin names every device. The reference is
      // thin_rmap on the same mappings restored without sharing.
      let ref = img;
      if (snapshots) {
        const xml = runOracle('thin_dump', [img.path]);
        expect(xml.status).toBe(0);
        ref = restoreFlat(xml.stdout, statSync(img.path).size, 'flat');
      }
      try {
        for (let k = 0; k < 2; k++) {
          const regions: string[] = [];
          for (let j = c.int(1, 3); j > 0; j--) {
            const b = c.int(0, pool.nrDataBlocks);
            regions.push(`${b}..${b + c.pick([1, c.int(1, 100), c.int(1, pool.nrDataBlocks)])}`);
          }
          const a = regions.flatMap((r) => ['--region', r]);
          const ours = runCli(['rmap', ...a, img.path]);
          const theirs = runOracle('thin_rmap', [...a, ref.path]);
          expect({ regions, status: ours.status, stdout: ours.stdout }).toEqual({ regions, status: theirs.status, stdout: theirs.stdout });
        }
      } finally {
        if (ref !== img) ref.cleanup();
      }
    });

    test('the extensions agree with the reference: delta --no-same, delta -f json, ls --json, dump -f json', () => {
      // --no-same: thin_delta's output without its <same> elements; with
      // --verbose, without its <same> blocks, and the groups of one kind that
      // a <same> block kept apart are one group, as thin_delta groups them.
      const noSame = (xml: string): string =>
        xml.replace(/^ {4}<same .*\n|^ {4}<same>\n(?: {6}<range .*\n)* {4}<\/same>\n/gm, '').replace(/^ {4}<\/(different|left_only|right_only)>\n {4}<\1>\n/gm, '');
      if (pool.devices.length) {
        const a = ['--snap1', String(c.pick(pool.devices)), '--snap2', String(c.pick(pool.devices))];
        for (const v of [[], ['--verbose']]) {
          const ref = runOracle('thin_delta', [...v, ...a, img.path]);
          const ours = runCli(['delta', '--no-same', ...v, ...a, img.path]);
          expect({ a, v, status: ours.status, stdout: ours.stdout }).toEqual({ a, v, status: 0, stdout: noSame(ref.stdout) });
        }
      }
      // delta -f json: thin_delta --verbose's ranges, one extent each, in order.
      if (pool.devices.length) {
        const [l, r] = [c.pick(pool.devices), c.pick(pool.devices)];
        const ref = runOracle('thin_delta', ['--verbose', '--snap1', String(l), '--snap2', String(r), img.path]);
        expect(ref.status).toBe(0);
        const sb = xmlAttrs(/<superblock [^>]*>/.exec(ref.stdout)![0]);
        const extents = [...ref.stdout.matchAll(/<(same|different|left_only|right_only)>\n([\s\S]*?)<\/\1>/g)].flatMap((g) =>
          [...g[2].matchAll(/<range [^>]*>/g)].map((e) => {
            const a = xmlAttrs(e[0]);
            const one = Number(a.data_begin);
            const [leftData, rightData] =
              g[1] === 'same' ? [one, one] : g[1] === 'different' ? [Number(a.left_data_begin), Number(a.right_data_begin)] : g[1] === 'left_only' ? [one, null] : [null, one];
            return { kind: g[1], begin: a.begin, length: Number(a.length), leftData, rightData };
          }),
        );
        const ours = runCli(['delta', '-f', 'json', '--snap1', String(l), '--snap2', String(r), img.path]);
        expect(ours.status).toBe(0);
        expect(JSON.parse(ours.stdout)).toEqual({
          superblock: { time: Number(sb.time), transactionId: sb.transaction, dataBlockSize: Number(sb.data_block_size), nrDataBlocks: Number(sb.nr_data_blocks), metadataSnap: sb.metadata_snap === undefined ? null : Number(sb.metadata_snap) },
          left: l,
          right: r,
          extents,
        });
      }
      // ls --json: thin_ls's numbers, 64-bit sizes as decimal strings (README, JSON).
      const refLs = runOracle('thin_ls', ['--no-headers', '-o', FIELDS.join(','), img.path]);
      expect(refLs.status).toBe(0);
      const want = refLs.stdout
        .split('\n')
        .filter((l) => l.trim())
        .map((l) => {
          const v = l.trim().split(/\s+/);
          const f = Object.fromEntries(FIELDS.map((k, i) => [k, v[i]]));
          return {
            devId: Number(f.DEV), mappedBlocks: Number(f.MAPPED_BLOCKS), exclusiveBlocks: Number(f.EXCLUSIVE_BLOCKS), sharedBlocks: Number(f.SHARED_BLOCKS),
            mappedSectors: f.MAPPED_SECTORS, exclusiveSectors: f.EXCLUSIVE_SECTORS, sharedSectors: f.SHARED_SECTORS,
            mappedBytes: f.MAPPED_BYTES, exclusiveBytes: f.EXCLUSIVE_BYTES, sharedBytes: f.SHARED_BYTES,
            transactionId: f.TRANSACTION, creationTime: Number(f.CREATE_TIME), snapshottedTime: Number(f.SNAP_TIME),
          };
        });
      const ls = runCli(['ls', '--json', '-o', FIELDS.join(','), img.path]);
      expect(ls.status).toBe(0);
      expect(JSON.parse(ls.stdout)).toEqual(want);
      // dump -f json: thin_dump's XML, element by element.
      const xml = runOracle('thin_dump', [img.path]);
      expect(xml.status).toBe(0);
      const sb = xmlAttrs(/<superblock [^>]*>/.exec(xml.stdout)![0]);
      const devices = [...xml.stdout.matchAll(/<device [^>]*>([\s\S]*?)<\/device>/g)].map((m) => {
        const d = xmlAttrs(m[0].slice(0, m[0].indexOf('>')));
        return {
          devId: Number(d.dev_id), mappedBlocks: Number(d.mapped_blocks), transactionId: d.transaction, creationTime: Number(d.creation_time), snapshottedTime: Number(d.snap_time),
          mappings: [...m[1].matchAll(/<(range|single)_mapping [^>]*>/g)].map((e) => {
            const r = xmlAttrs(e[0]);
            return e[1] === 'range'
              ? { originBegin: r.origin_begin, dataBegin: Number(r.data_begin), length: Number(r.length), time: Number(r.time) }
              : { originBegin: r.origin_block, dataBegin: Number(r.data_block), length: 1, time: Number(r.time) };
          }),
        };
      });
      const dump = runCli(['dump', '-f', 'json', img.path]);
      expect(dump.status).toBe(0);
      const got = JSON.parse(dump.stdout) as { superblock: Record<string, unknown>; devices: unknown[] };
      expect({ ...got.superblock, flags: undefined, version: undefined, heldRoot: undefined }).toEqual({
        uuid: sb.uuid, time: Number(sb.time), transactionId: sb.transaction, dataBlockSize: Number(sb.data_block_size), nrDataBlocks: Number(sb.nr_data_blocks),
        flags: undefined, version: undefined, heldRoot: undefined,
      });
      expect(got.devices).toEqual(devices);
    });

    if (kind === 'held') {
      test('the held metadata snapshot: dump -m, ls -m, delta -m and check -m', () => {
        expect(pool.heldRoot).not.toBeNull();
        // thin_dump -m and thin_delta -m print nr_data_blocks 0 (the held
        // copy has no space maps); dmthin prints the live pool's (ORACLE-NOTES.md).
        const nr = (s: string): string => s.replace(/nr_data_blocks="0"/, `nr_data_blocks="${pool.nrDataBlocks}"`);
        for (const m of ['-m', `--metadata-snap=${pool.heldRoot}`]) {
          const ours = runCli(['dump', m, img.path]);
          const ref = runOracle('thin_dump', [m, img.path]);
          expect(ref.stdout).toMatch(/nr_data_blocks="0"/);
          expect({ status: ours.status, stdout: ours.stdout }).toEqual({ status: ref.status, stdout: nr(ref.stdout) });
        }
        expectSame(['ls', '-m', '-o', FIELDS.join(','), img.path], 'thin_ls', ['-m', '-o', FIELDS.join(','), img.path]);
        for (let k = 0; k < 3; k++) {
          const a = ['-m', '--snap1', String(c.pick(pool.heldDevices)), '--snap2', String(c.pick(pool.heldDevices))];
          for (const args of [a, ['--verbose', ...a]]) {
            const ours = runCli(['delta', ...args, img.path]);
            const ref = runOracle('thin_delta', [...args, img.path]);
            expect(ref.stdout).toMatch(/nr_data_blocks="0"/); // thin_delta -m too
            expect({ args, status: ours.status, stdout: ours.stdout }).toEqual({ args, status: ref.status, stdout: nr(ref.stdout) });
          }
        }
        expect(runOracle('thin_check', ['-m', img.path]).status).toBe(0);
        const r = runCli(['check', '-m', img.path]);
        expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
      });
    }

    test('check passes where thin_check passes', () => {
      expect(runOracle('thin_check', [img.path]).status).toBe(0);
      const r = runCli(['check', img.path]);
      expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
      expect(r.stdout).toMatch(/no problems found/);
    });
  });
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i + 1);

describeOracle('random pools: every read-only command equals the 0.9.0 tools', () => {
  test('the generator is deterministic: one seed, one image', () => {
    const a = makeRandomPool(7, 'held');
    const b = makeRandomPool(7, 'held');
    try {
      expect(b.pool).toEqual(a.pool);
      expect(readFileSync(b.img.path).equals(readFileSync(a.img.path))).toBe(true);
    } finally {
      a.img.cleanup();
      b.img.cleanup();
    }
  });
  cases('xml', range(count(4)));
  cases('snap', range(count(2)));
  cases('held', range(count(2)));
});
