/**
 * Pool and LV names on the command line where no pool is involved (host, no
 * device-mapper needed): what a name that is no file becomes, and LV names
 * given where only thin ids can work. The names of real LVM pools are tested
 * in the root-VM suite (test/vm/lvm-names.vm.test.ts).
 */
import { existsSync } from 'node:fs';
import { fixtureFile } from '../helpers/fixtures';
import { runCli } from './run-cli';

function oneLine(r: { status: number | null; stderr: string }): string {
  expect(r.status).toBe(1);
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  return r.stderr;
}

// Whatever device-mapper says here (no such LV, or no device-mapper at all), the file is missing too.
// With -m the pool was meant: its error keeps device-mapper's fix. Without -m (check of a name), where
// there is no device-mapper (this host), no such file is all there is to say (found by an outside hunt:
// `check nonexist.bin` told how to load device-mapper).
const HAVE_DM = existsSync('/dev/mapper/control');
const NO_FILE_M = 'no such file, and ';
const NO_FILE = HAVE_DM ? NO_FILE_M : 'no such file or directory \\(nor a pool: device-mapper is not available on this machine\\) \\[ENOENT\\]$';

test('a VG/LV-shaped path that is no file: with -m, read as a pool name, and the error says both', () => {
  const err = oneLine(runCli(['dump', '-m', 'no-such-dir/no-such-file']));
  expect(err).toMatch(new RegExp(`^dmthin dump: no-such-dir/no-such-file: ${NO_FILE_M}`, 'm'));
});

test('a bare name that is no file (a mistyped file name, or a dm name): the error says no such file too', () => {
  for (const [args, said] of [[['check', 'pool.bn'], NO_FILE], [['dump', '-m', 'meta.img'], NO_FILE_M]] as const) {
    expect(oneLine(runCli([...args]))).toMatch(new RegExp(`^dmthin ${args[0]}: ${args[args.length - 1].replace('.', '\\.')}: ${said}`, 'm'));
  }
});

test('without -m, a pool name is refused as a file that does not exist, pointing at -m', () => {
  const err = oneLine(runCli(['ls', 'no-such-vg/no-such-lv']));
  expect(err).toBe('dmthin ls: no-such-vg/no-such-lv: no such file (a live pool can be read by name only through its metadata snapshot, -m) [ENOENT]\n');
});

test('a path of no pool shape is a missing file, never a pool', () => {
  const err = oneLine(runCli(['dump', '-m', './a/b/c']));
  expect(err).not.toMatch(/pool/);
  expect(err).toMatch(/ENOENT/);
});

test('LV names where no live LVM pool is given: refused before anything is read', () => {
  const err = oneLine(runCli(['send', '--metadata', '/nonexistent/meta', '--data', '/nonexistent/data', '--size', '1M', '--snap', 'vg/snap7', '-o', '/nonexistent/out']));
  expect(err).toBe("dmthin send: --snap must be a thin id (0..16777215) or, with a live LVM pool, an LV name, got 'vg/snap7' [EINVAL]\n");
});

test('LV names with a metadata file: refused, naming the flag', () => {
  using f = fixtureFile('snapshots');
  expect(oneLine(runCli(['delta', '--snap1', 'vg/a', '--snap2', '1', f.path]))).toBe(
    "dmthin delta: --snap1 must be a thin id (decimal digits) or, with a live LVM pool, an LV name, got 'vg/a' [EINVAL]\n",
  );
  expect(oneLine(runCli(['dump', '--dev-id', 'snap', f.path]))).toBe("dmthin dump: --dev-id must be a thin id (decimal digits) or, with a live LVM pool, an LV name, got 'snap' [EINVAL]\n");
});

test('--help says what a pool name may be: pool events as the other pool commands, replicate and merge without LVM', () => {
  const flat = (args: string[]) => runCli([...args, '--help']).stdout.replace(/\s+/g, ' ');
  const poolArg = 'name the pool: dm name, VG/LV (LVM) or device node (/dev/mapper/NAME, /dev/VG/LV)';
  for (const cmd of ['status', 'events', 'reserve-metadata-snap']) expect({ cmd, has: flat(['pool', cmd]).includes(poolArg) }).toEqual({ cmd, has: true });
  for (const cmd of ['replicate', 'merge']) {
    expect(flat([cmd])).toContain('--pool <name> a live thin-pool not managed by LVM (an LVM pool is refused): dm name or device node');
  }
});
