/**
 * The attached metadata-snapshot block (-mBLOCK, --metadata-snap=BLOCK) is
 * read only where it stands as an option: not as the value of an option that
 * takes one, not after "--", and not by a command without -m. check and ls
 * take -m as a flag first, as thin_check and thin_ls 0.9.0 do (-mq is -m -q).
 * Offline images only (no device-mapper needed).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { CLI, runCli } from './run-cli';
import { fixtureImage } from '../helpers/fixtures';
import { scratch, writeDataFile, type Scratch } from '../stream/helpers';

const BS = 65536;
let s: Scratch;
let held: string; // an image with a held metadata snapshot (root 8)
let plain: string; // one without
let data: string;

beforeAll(async () => {
  s = scratch();
  const image = fixtureImage('metadata-snap-diverged');
  held = s.path('held.bin');
  writeFileSync(held, image);
  plain = s.path('plain.bin');
  writeFileSync(plain, fixtureImage('basic'));
  data = s.path('data.bin');
  await writeDataFile(image, data, BS);
});
afterAll(() => s.cleanup());

/** The CLI run in the scratch directory, so that a relative name can start with "-m". */
function cli(args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: s.dir, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('dump -o -mout.xml writes the file "-mout.xml" (also -qo, --output=)', () => {
  const want = runCli(['dump', held]).stdout;
  for (const args of [['-o', '-mout.xml'], ['-qo', '-mq.xml'], ['--output=-mx.xml']]) {
    const r = cli(['dump', ...args, held]);
    expect({ args, status: r.status, stderr: r.stderr }).toEqual({ args, status: 0, stderr: '' });
    const file = s.path(args[args.length - 1].replace(/^--output=/, ''));
    expect(readFileSync(file, 'utf8')).toBe(want);
  }
});

test('ls -- -mfile.bin reads the file "-mfile.bin", as thin_ls 0.9.0 does', () => {
  copyFileSync(held, s.path('-mfile.bin'));
  const r = cli(['ls', '--', '-mfile.bin']);
  expect({ status: r.status, stderr: r.stderr, stdout: r.stdout }).toEqual({ status: 0, stderr: '', stdout: runCli(['ls', held]).stdout });
});

test('send --pool-id -mypool, then receive --target -mt.img: values, not -m', () => {
  const stream = s.path('s.dts');
  const sent = cli(['send', '--metadata', held, '--data', data, '--snap', '1', '--size', '16M', '--pool-id', '-mypool', '-q', '-o', stream]);
  expect({ status: sent.status, stderr: sent.stderr }).toEqual({ status: 0, stderr: '' });
  const got = cli(['receive', '--target', '-mt.img', '--create', '-i', stream, '-q']);
  expect({ status: got.status, stderr: got.stderr }).toEqual({ status: 0, stderr: '' });
  expect(existsSync(s.path('-mt.img'))).toBe(true);
  expect(readFileSync(s.path('-mt.img.dmthin-state.json'), 'utf8')).toContain('-mypool');
});

test('backup --volume -mvol: the volume is "-mvol"', () => {
  const repo = s.path('repo');
  expect(cli(['backups', 'init', '--repo', repo]).status).toBe(0);
  const r = cli(['backup', '--metadata', held, '--data', data, '--snap', '1', '--size', '16M', '--repo', repo, '--volume', '-mvol', '--json']);
  expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
  expect(JSON.parse(r.stdout)).toMatchObject({ volume: '-mvol' });
});

test('a command without -m leaves -mbar alone: message names it, not a hidden option', () => {
  const r = runCli(['message', 'POOL', '0', 'foo', '-mbar']);
  expect(r.status).toBe(1);
  expect(r.stderr).not.toMatch(/metadata-snap/);
  expect(r.stderr.trim()).toMatch(/^dmthin message: .*'-mbar'.*\[EINVAL\]$/);
});

test('check -mq is -m -q, as thin_check 0.9.0 (silent, exit 0 on a held snapshot; exit 1 without one)', () => {
  for (const flags of [['-mq'], ['-qm'], ['-m', '-q']]) {
    const r = runCli(['check', ...flags, held]);
    expect({ flags, status: r.status, stdout: r.stdout, stderr: r.stderr }).toEqual({ flags, status: 0, stdout: '', stderr: '' });
    expect(runCli(['check', ...flags, plain]).status).toBe(1);
  }
});

test('ls -mq and ls -qm are both -m -q', () => {
  const want = runCli(['ls', '-m', held]);
  expect(want.status).toBe(0);
  for (const flag of ['-mq', '-qm']) expect(runCli(['ls', flag, held])).toEqual(want);
});

test('ls -m8q and check -m8q: the block, then more short flags (thin_ls takes -m8q; an outside test: "unknown option \'-8q\'")', () => {
  expect(runCli(['ls', '-m8q', held])).toEqual(runCli(['ls', '-m8', held]));
  const c = runCli(['check', '-m8q', held]);
  expect({ status: c.status, stdout: c.stdout, stderr: c.stderr }).toEqual({ status: 0, stdout: '', stderr: '' });
  // -q: silent, but block 5 is still the block asked for (not the held root 8): exit 1.
  expect(runCli(['check', '-m5q', held]).status).toBe(1);
});

test('the attached block still works where it stands as an option, and dump -mq is refused as thin_dump refuses it', () => {
  const want = runCli(['dump', '-m', held]).stdout;
  for (const m of ['-m8', '--metadata-snap=8']) {
    expect(runCli(['dump', m, held]).stdout).toBe(want);
    expect(runCli(['check', '-q', m, held]).status).toBe(0);
  }
  expect(runCli(['ls', '-m8', held]).stdout).toBe(runCli(['ls', '-m', held]).stdout);
  expect(runCli(['check', '-m5', held]).stderr.trim()).toMatch(/block 5 does not match the held root 8/);
  const r = runCli(['dump', '-mq', held]);
  expect({ status: r.status, stderr: r.stderr.trim() }).toEqual({ status: 1, stderr: "dmthin dump: --metadata-snap block must be a non-negative integer, got 'q' [EINVAL]" });
  // Block 0 in the command line's words, not the library option's (found by an outside hunt).
  const z = runCli(['dump', '-m0', held]);
  expect({ status: z.status, stderr: z.stderr.trim() }).toEqual({ status: 1, stderr: "dmthin dump: --metadata-snap block must be 1 or more (block 0 is the live superblock), got '0' [EINVAL]" });
});
