/**
 * `dmthin check` against thin_check 0.9.0.
 *  - every fixture and both kernel-made images: both exit 0; so does a pool
 *    never resumed (nr_data_blocks 0);
 *  - every corruption kind on every fixture it applies to, with and without
 *    --ignore-non-fatal-errors: wherever thin_check exits non-zero, dmthin
 *    exits 1; where thin_check exits 0, dmthin follows the verdict rules
 *    (the exact exit and problem kind below).
 * The counts of agreeing cases and of cases where dmthin rightly fails and
 * 0.9.0 does not are printed at the end.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { corrupt, CORRUPTION_KINDS, CorruptionKind, listNodes, node, seal } from '../helpers/corrupt';
import { describeOracle, fixtureImage, kernelFixtureImage, listFixtures, listKernelFixtures, oraclePath, restoreFlat } from '../helpers/fixtures';
import { CLI } from '../cli/run-cli';
import { MetadataError } from '../../src/errors';
import { checkMetadata, openFailureReport, reportFails, type CheckReport } from '../../src/thin/check';
import { ThinMetadata } from '../../src/thin/metadata';

/** The problem dmthin must report for each fault, and whether it is fatal. */
const VERDICT: Record<CorruptionKind, { kind: string; fatal: boolean }> = {
  'node-checksum': { kind: 'checksum', fatal: true },
  'node-blocknr': { kind: 'blocknr', fatal: true },
  'superblock-magic': { kind: 'magic', fatal: true },
  'superblock-byte-flip': { kind: 'checksum', fatal: true },
  'truncate-after-superblock': { kind: 'truncated', fatal: true },
  'truncate-mid-trees': { kind: 'truncated', fatal: true },
  'cycle-self': { kind: 'cycle', fatal: true },
  'cycle-ancestor': { kind: 'cycle', fatal: true },
  'child-beyond-device': { kind: 'block-range', fatal: true },
  'keys-out-of-order': { kind: 'key-order', fatal: true },
  'child-outside-parent-range': { kind: 'key-range', fatal: true },
  'leaf-value-size-16': { kind: 'value-size', fatal: true },
  'max-entries-not-div3': { kind: 'max-entries', fatal: true },
  'max-entries-wrong': { kind: 'max-entries', fatal: true },
  'nr-entries-over-max': { kind: 'nr-entries', fatal: true },
  'node-flags-3': { kind: 'node-flags', fatal: true },
  'node-flags-0': { kind: 'node-flags', fatal: true },
  'wrong-block-type': { kind: 'block-type', fatal: true },
  'data-block-beyond-end': { kind: 'data-range', fatal: true },
  'details-only-device': { kind: 'device-mismatch', fatal: true },
  'mapping-only-device': { kind: 'device-mismatch', fatal: true },
  'depth-bomb': { kind: 'nr-entries', fatal: true },
  'metadata-block-size': { kind: 'block-size', fatal: true },
  'superblock-version': { kind: 'version', fatal: true },
  'underfull-leaf': { kind: 'nr-entries', fatal: true },
  'underfull-leaf-0': { kind: 'nr-entries', fatal: true },
  'underfull-internal': { kind: 'nr-entries', fatal: true },
  'underfull-internal-0': { kind: 'nr-entries', fatal: true },
  'metadata-sm-raised': { kind: 'sm-count-high', fatal: false },
  'metadata-sm-lowered': { kind: 'sm-count-low', fatal: true },
  'metadata-sm-in-use-free': { kind: 'sm-in-use-counted-free', fatal: true },
  'data-sm-raised': { kind: 'sm-count-high', fatal: false },
  'data-sm-lowered': { kind: 'sm-count-low', fatal: true },
  'data-sm-in-use-free': { kind: 'sm-in-use-counted-free', fatal: true },
  'metadata-refcount-raised': { kind: 'sm-count-high', fatal: false },
  'metadata-refcount-lowered': { kind: 'sm-count-low', fatal: true },
  'data-refcount-raised': { kind: 'sm-count-high', fatal: false },
  'data-refcount-lowered': { kind: 'sm-count-low', fatal: true },
  'metadata-nr-free': { kind: 'sm-nr-free', fatal: false },
  'data-nr-free': { kind: 'sm-nr-free', fatal: false },
  'metadata-nr-allocated': { kind: 'sm-nr-allocated', fatal: false },
  'data-nr-allocated': { kind: 'sm-nr-allocated', fatal: false },
  'metadata-leak': { kind: 'sm-leak', fatal: false },
  'data-leak': { kind: 'sm-leak', fatal: false },
  'mapped-blocks': { kind: 'mapped-count', fatal: false },
};

const FIXTURES = ['basic', 'range-merge', 'deep-tree', 'snapshots', 'shared-subtree', 'many-devices', 'metadata-snap-diverged'];

function run(cmd: string, args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

const dir = mkdtempSync(join(tmpdir(), 'dmthin-check-oracle-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let serial = 0;

interface Outcome {
  thinCheck: [number | null, number | null];
  dmthin: [number | null, number | null];
  kinds: { kind: string; severity: string }[];
}

/**
 * dmthin's verdict on an image without a CLI start: the library's check, as
 * `dmthin check` runs it (open, checkMetadata, a MetadataError from the open
 * being the verdict), with the exit statuses the command derives from it.
 */
async function libraryVerdict(path: string): Promise<{ status: [number, number]; kinds: { kind: string; severity: string }[] }> {
  let report: CheckReport;
  let md: ThinMetadata | undefined;
  try {
    md = await ThinMetadata.open(path);
    report = await checkMetadata(md);
  } catch (e) {
    if (!(e instanceof MetadataError)) throw e;
    report = openFailureReport(e);
  } finally {
    await md?.close();
  }
  return {
    status: [reportFails(report) ? 1 : 0, reportFails(report, true) ? 1 : 0],
    kinds: report.problems.map((p) => ({ kind: p.kind, severity: p.severity })),
  };
}

/**
 * thin_check and dmthin check on one image, without and with
 * --ignore-non-fatal-errors: dmthin as the CLI (`cli`: every clean image and
 * the first image of each corruption kind), else through the library in this
 * process (the other images: half a second of CLI start-up each, ~600 of
 * them, had made this file two minutes of CI).
 */
async function both(img: Buffer, cli = true): Promise<Outcome> {
  const path = join(dir, `img-${serial++}.bin`);
  writeFileSync(path, img);
  const tc = oraclePath('thin_check')!;
  try {
    const [a, b, c, d] = await Promise.all([
      run(tc, ['-q', path]),
      run(tc, ['-q', '--ignore-non-fatal-errors', path]),
      cli ? run(process.execPath, [CLI, 'check', '--json', path]) : undefined,
      cli ? run(process.execPath, [CLI, 'check', '-q', '--ignore-non-fatal-errors', path]) : undefined,
    ]);
    if (!c || !d) {
      const v = await libraryVerdict(path);
      return { thinCheck: [a.status, b.status], dmthin: v.status, kinds: v.kinds };
    }
    const j = JSON.parse(c.stdout) as { problems: { kind: string; severity: string }[] };
    return { thinCheck: [a.status, b.status], dmthin: [c.status, d.status], kinds: j.problems.map((p) => ({ kind: p.kind, severity: p.severity })) };
  } finally {
    rmSync(path);
  }
}

const tally = { cases: 0, agree: 0, dmthinRightlyFails: 0, byKind: new Map<string, string>() };

describeOracle('dmthin check vs thin_check 0.9.0', () => {
  afterAll(() => {
    const lines = [...tally.byKind.entries()].map(([k, v]) => `  ${k.padEnd(27)} ${v}`);
    console.log(
      `check oracle: ${tally.cases} case-modes (image x with/without --ignore-non-fatal-errors); ` +
        `${tally.agree} agree with thin_check 0.9.0, ${tally.dmthinRightlyFails} where dmthin rightly fails and 0.9.0 exits 0\n` +
        `thin_check 0.9.0 exit (plain/ignore-non-fatal) -> dmthin exit, per corruption kind:\n${lines.join('\n')}`,
    );
  });

  const clean: [string, () => Buffer][] = [
    ...listFixtures().map((f) => [f.name, () => fixtureImage(f.name)] as [string, () => Buffer]),
    ...listKernelFixtures().map((k) => [k.name, () => kernelFixtureImage(k.name)] as [string, () => Buffer]),
  ];
  it.each(clean)('clean %s: both exit 0', async (_name, img) => {
    const o = await both(img());
    expect(o.thinCheck).toEqual([0, 0]);
    expect(o.dmthin).toEqual([0, 0]);
    expect(o.kinds).toEqual([]);
    tally.cases += 2;
    tally.agree += 2;
  });

  test('-q prints nothing but the exit status; with --json only the JSON report (thin_check -q: nothing on stdout)', async () => {
    const clean = fixtureImage('basic');
    const bad = Buffer.from(clean);
    bad[4096 + 100] ^= 0xff; // block 1's checksum no longer matches
    for (const [img, want] of [[clean, 0], [bad, 1]] as const) {
      const path = join(dir, `quiet-${want}.bin`);
      writeFileSync(path, img);
      try {
        const ref = await run(oraclePath('thin_check')!, ['-q', path]);
        expect([ref.status, ref.stdout]).toEqual([want, '']); // (0.9.0 still prints an open failure on stderr)
        const quiet = await run(process.execPath, [CLI, 'check', '-q', path]);
        expect([quiet.status, quiet.stdout, quiet.stderr]).toEqual([want, '', '']);
        // With --json the report asked for is printed, and nothing else (the same with every command's -q).
        for (const args of [['-q', '--json'], ['--json', '-q']]) {
          const o = await run(process.execPath, [CLI, 'check', ...args, path]);
          expect([args, o.status, JSON.parse(o.stdout).fatal, o.stderr]).toEqual([args, want, want, '']);
        }
      } finally {
        rmSync(path);
      }
    }
  });

  test('metadata that cannot be opened at all (no such file, a directory, -m with no snapshot held): -q prints nothing, as thin_check -q; --json reports it with every count null (outside review: an error line, no report)', async () => {
    const clean = join(dir, 'no-held.bin');
    writeFileSync(clean, fixtureImage('basic')); // holds no metadata snapshot
    const cases: [string, string[]][] = [
      ['no such file', [join(dir, 'absent.bin')]],
      ['a directory', [dir]],
      ['-m, none held', ['-m', clean]],
    ];
    try {
      for (const [what, args] of cases) {
        const ref = await run(oraclePath('thin_check')!, ['-q', ...args]);
        expect([what, ref.status, ref.stdout, ref.stderr]).toEqual([what, 1, '', '']);
        const quiet = await run(process.execPath, [CLI, 'check', '-q', ...args]);
        expect([what, quiet.status, quiet.stdout, quiet.stderr]).toEqual([what, 1, '', '']);
        for (const flags of [['--json'], ['--json', '-q']]) {
          const o = await run(process.execPath, [CLI, 'check', ...flags, ...args]);
          expect([what, flags, o.status]).toEqual([what, flags, 1]);
          const j = JSON.parse(o.stdout) as { fatal: number; problems: { kind: string }[]; counts: Record<string, unknown> };
          expect(j.fatal).toBe(1);
          expect(j.problems.map((p) => p.kind)).toEqual(['open']);
          expect(Object.values(j.counts).every((v) => v === null)).toBe(true);
          // The problem's message is the error's; without -q the line on stderr is the text form's (its code too, not a verdict's EUCLEAN).
          if (flags.includes('-q')) expect(o.stderr).toBe('');
          else expect([what, o.stderr]).toEqual([what, (await run(process.execPath, [CLI, 'check', ...args])).stderr]);
        }
        // Without -q or --json, the error's own line.
        const plain = await run(process.execPath, [CLI, 'check', ...args]);
        expect([what, plain.status, plain.stdout]).toEqual([what, 1, '']);
        expect(plain.stderr).toMatch(/^dmthin check: .*\[E[A-Z]+\]\n$/);
        expect(plain.stderr).not.toContain('EUCLEAN');
      }
    } finally {
      rmSync(clean);
    }
  });

  // The kernel formats metadata with an empty data space map and grows it at
  // the pool's first resume: a pool made and never resumed has nr_data_blocks 0.
  it.each([
    ['no devices', ''],
    ['two devices without mappings', '<device dev_id="1" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">\n</device>\n<device dev_id="7" mapped_blocks="0" transaction="1" creation_time="1" snap_time="1">\n</device>\n'],
  ])('a pool never resumed (nr_data_blocks 0), %s: both exit 0', async (name, devices) => {
    const xml = `<superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="0">\n${devices}</superblock>\n`;
    using img = restoreFlat(xml, 4 << 20, `never-resumed-${name.replace(/ /g, '-')}`);
    const o = await both(readFileSync(img.path));
    expect(o).toEqual({ thinCheck: [0, 0], dmthin: [0, 0], kinds: [] });
    tally.cases += 2;
    tally.agree += 2;
  });

  // thin_check 0.9.0 --skip-mappings reads the top-level tree but never looks at
  // its values; dmthin follows the kernel, which could not open that device's
  // tree (and its own ls, which refuses the image): a fatal block-range problem.
  test('--skip-mappings, a device mapping root beyond the metadata device: 0.9.0 exits 0, dmthin rightly fails', async () => {
    const img = Buffer.from(fixtureImage('snapshots'));
    const top = listNodes(img).filter((x) => x.tree === 'top' && x.leaf).pop()!;
    const n = node(img, top.block);
    n.buf.writeBigUInt64LE(1_000_000n, n.valueOff(n.nr - 1));
    seal(n.buf, 'btree');
    const path = join(dir, 'skip-mappings-root-beyond.bin');
    writeFileSync(path, img);
    try {
      const ref = await run(oraclePath('thin_check')!, ['-q', '--skip-mappings', path]);
      const o = await run(process.execPath, [CLI, 'check', '--json', '--skip-mappings', path]);
      expect([ref.status, o.status]).toEqual([0, 1]);
      const j = JSON.parse(o.stdout) as { problems: { kind: string; severity: string; devId: number; block: string }[] };
      expect(j.problems.map((p) => [p.severity, p.kind, p.devId, String(p.block)])).toEqual([['fatal', 'block-range', Number(n.key(n.nr - 1)), '1000000']]);
      tally.cases++;
      tally.dmthinRightlyFails++;
    } finally {
      rmSync(path);
    }
  });

  it.each(CORRUPTION_KINDS)('%s', async (kind) => {
    const v = VERDICT[kind];
    let applied = 0;
    const seen = new Set<string>();
    for (const name of FIXTURES) {
      let image: Buffer;
      try {
        image = corrupt(fixtureImage(name), kind).image;
      } catch {
        continue; // no suitable target in this fixture
      }
      applied++;
      const o = await both(image, applied === 1);
      const ctx = `${kind} on ${name}: thin_check ${o.thinCheck}, dmthin ${o.dmthin}`;
      // Never weaker than 0.9.0, in either mode.
      for (const m of [0, 1]) if (o.thinCheck[m] !== 0) expect([ctx, o.dmthin[m]]).toEqual([ctx, 1]);
      // The verdict rules: the expected problem, exit 1 without the flag, and with it only if fatal.
      expect(o.kinds).toContainEqual({ kind: v.kind, severity: v.fatal ? 'fatal' : 'non-fatal' });
      expect([ctx, o.dmthin]).toEqual([ctx, [1, v.fatal ? 1 : 0]]);
      for (const m of [0, 1]) {
        tally.cases++;
        if ((o.thinCheck[m] === 0) === (o.dmthin[m] === 0)) tally.agree++;
        else if (o.thinCheck[m] === 0) tally.dmthinRightlyFails++;
      }
      seen.add(`${o.thinCheck.join('/')} -> ${o.dmthin.join('/')}`);
    }
    expect(applied).toBeGreaterThan(0);
    tally.byKind.set(kind, `${[...seen].join(', ')} (${applied} fixtures)`);
  }, 120_000);
});
