/**
 * The errors a new user meets first, as they see them: the built CLI in a
 * child process, its exit status and its one stderr line.
 *
 * - usage errors of the parser, in the same "dmthin CMD: message [CODE]" form
 *   as every other error, exit 1 like thin_* 0.9.0;
 * - no device-mapper and no privilege, for real: as root the test mounts a
 *   tmpfs over /dev/mapper in a private mount namespace (no node: ENOENT; a
 *   character node of a misc minor no driver registered: ENODEV, what a
 *   kernel without dm_mod answers) and drops to uid 65534 for EACCES;
 * - no native addon: a copy of dist/ and package.json without build/, and
 *   one with a corrupt dmthin.node. Image files are still read (the portable
 *   CRC and reader) and give the reference tools' output.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, cpSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixtureFile, fixtureImage, itOracle, REPO_ROOT, restoreFlat, runOracle, tempImage as tempImageCopy, type TempFile } from '../helpers/fixtures';
import { listNodes } from '../helpers/corrupt';
import { CLI, runCli } from './run-cli';
import { Command } from 'commander';
import { collect } from '../../src/cli/common';
import { COMMANDS } from '../../src/cli/commands';

/** Exactly one line on stderr, nothing on stdout. */
function oneLine(r: { status: number | null; stdout: string; stderr: string }): string {
  expect(r.stdout).toBe('');
  expect(r.stderr.endsWith('\n')).toBe(true);
  const lines = r.stderr.slice(0, -1).split('\n');
  expect(lines).toHaveLength(1);
  return lines[0];
}

let image: TempFile;
beforeAll(() => {
  image = fixtureFile('basic');
});
afterAll(() => image?.cleanup());

describe('usage errors: one line, [EINVAL], exit 1', () => {
  test.each([
    [['dump', '--bogus', 'x'], "dmthin dump: unknown option '--bogus'; see 'dmthin dump --help' [EINVAL]"],
    [['ls', '-x', 'x'], "dmthin ls: unknown option '-x'; see 'dmthin ls --help' [EINVAL]"],
    [['dump', '--fromat', 'xml', 'x'], "dmthin dump: unknown option '--fromat' (did you mean --format?); see 'dmthin dump --help' [EINVAL]"],
    [['dump'], "dmthin dump: missing required argument 'metadata'; see 'dmthin dump --help' [EINVAL]"],
    [['dump', 'a', 'b'], "dmthin dump: too many arguments: expected 1, got 2; see 'dmthin dump --help' [EINVAL]"],
    [['dump', 'x', '-f'], "dmthin dump: option '-f, --format <format>' argument missing; see 'dmthin dump --help' [EINVAL]"],
    [['send', '--metadata', 'x'], "dmthin send: required option '--snap <id>' not specified; see 'dmthin send --help' [EINVAL]"],
    [['bogus'], "dmthin: unknown command 'bogus'; see 'dmthin --help' [EINVAL]"],
    [['help', 'bogus'], "dmthin: unknown command 'bogus'; see 'dmthin --help' [EINVAL]"],
    [[], "dmthin: a command is required (dump, ls, delta, rmap, pool, message, devices, send, receive, replicate, merge, check, backup, restore, backups); see 'dmthin --help' [EINVAL]"],
    [
      ['pool'],
      "dmthin pool: a command is required (status, events, create-thin, create-snap, delete, set-transaction-id, reserve-metadata-snap, release-metadata-snap); see 'dmthin pool --help' [EINVAL]",
    ],
    [['pool', 'bogus'], "dmthin pool: unknown command 'bogus'; see 'dmthin pool --help' [EINVAL]"],
    [['pool', 'status'], "dmthin pool status: missing required argument 'name'; see 'dmthin pool status --help' [EINVAL]"],
    [['pool', 'create-thin', 'p', '1', '2'], "dmthin pool create-thin: too many arguments: expected 2, got 3; see 'dmthin pool create-thin --help' [EINVAL]"],
    [['message', 'p'], "dmthin message: missing required argument 'sector'; see 'dmthin message --help' [EINVAL]"],
    // delta has no -q, as thin_delta 0.9.0 has none.
    [['delta', '-q', '--snap1', '1', '--snap2', '2', 'x'], "dmthin delta: unknown option '-q'; see 'dmthin delta --help' [EINVAL]"],
    // An empty -o is no file name (it read as the current directory).
    [['dump', '-o', '', 'x'], "dmthin dump: -o needs a file name ('-' for stdout) [EINVAL]"],
    [['delta', '--snap1', '1', '--snap2', '2', '-o', '', 'x'], "dmthin delta: -o needs a file name ('-' for stdout) [EINVAL]"],
    [['rmap', '--region', '0..1', '-o', '', 'x'], "dmthin rmap: -o needs a file name ('-' for stdout) [EINVAL]"],
    [['send', '--metadata', 'm', '--data', 'd', '--snap', '1', '--size', '1M', '-o', ''], "dmthin send: -o needs a file name ('-' for stdout) [EINVAL]"],
  ])('dmthin %j', (args, line) => {
    const r = runCli(args);
    expect(r.status).toBe(1);
    expect(oneLine(r)).toBe(line);
  });

  test.each([[['help']], [['help', 'dump']], [['pool', 'help', 'status']], [['backups', 'help', 'init']]])(
    'dmthin %j prints the help it names and exits 0 (hunt S: exit 1 with "unknown command", since the exit-status guard set process.exitCode, which commander\'s help() takes for its own)',
    (args) => {
      const r = runCli(args);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      const asked = args.filter((a) => a !== 'help');
      expect(r.stdout).toBe(runCli([...asked, '--help']).stdout);
    },
  );

  test("our own argument checks read the same way (ls -o takes field names, as thin_ls's)", () => {
    const r = runCli(['ls', '-o', 'DEV,BOGUS', image.path]);
    expect(r.status).toBe(1);
    expect(oneLine(r)).toMatch(/^dmthin ls: unknown field 'BOGUS' \(fields: DEV, MAPPED_BLOCKS, .*\) \[EINVAL\]$/);
  });

  test.each([
    ['1KB', 'ambiguous decimal unit'],
    ['1 G', 'inner space'],
    ['2048sib', 'no such suffix'],
    ['12x', 'no such suffix'],
  ])('send --size %s is refused (%s), naming what is accepted', (size) => {
    const r = runCli(['send', '--metadata', image.path, '--data', image.path, '--snap', '1', '--size', size, '-o', join(tmpdir(), 'never-written')]);
    expect(r.status).toBe(1);
    expect(oneLine(r)).toBe(
      `dmthin send: --size must be bytes, or a number with a suffix K, M, G, T, P (binary: 1K = 1024; KiB, MiB... too; any case) or s (512-byte sectors); got '${size}' [EINVAL]`,
    );
  });

  test('send --help says the same of --size', () => {
    const help = runCli(['send', '--help']).stdout.replace(/\s+/g, ' ');
    expect(help).toContain("--size <size> the thin device's size: bytes, or a number with a suffix K, M, G, T, P (binary: 1K = 1024; KiB, MiB... too; any case) or s (512-byte sectors)");
  });

  test('ls --help says -o is the field list and lists every field', () => {
    const help = runCli(['ls', '--help']).stdout.replace(/\s+/g, ' ');
    expect(help).toContain('-o, --format <fields> comma-separated field names, case-sensitive (as thin_ls: here -o is the field list, not an output file)');
    for (const f of ['DEV', 'MAPPED_BLOCKS', 'EXCLUSIVE_SECTORS', 'SHARED_BYTES', 'TRANSACTION', 'SNAP_TIME']) expect(help).toContain(f);
  });

  itOracle('a bad option exits 1, as thin_dump, thin_ls and thin_delta 0.9.0 do', () => {
    for (const [tool, cmd] of [
      ['thin_dump', 'dump'],
      ['thin_ls', 'ls'],
      ['thin_delta', 'delta'],
    ]) {
      const ref = runOracle(tool, ['--bogus', image.path]);
      const ours = runCli([cmd, '--bogus', image.path]);
      expect([cmd, ours.status]).toEqual([cmd, ref.status]);
      expect(ref.status).toBe(1);
    }
    // thin_delta has no -q: it refuses it as any unknown option.
    expect(runOracle('thin_delta', ['-q', '--snap1', '1', '--snap2', '2', image.path]).status).toBe(1);
  });
});

describe('empty paths, missing and wrong files: one line naming the option and the path', () => {
  // '' (an unset shell variable) is a usage error naming the option, before anything is opened.
  test.each([
    [['ls', ''], "dmthin ls: the <metadata> argument is empty: give a path [EINVAL]"],
    [['dump', ''], "dmthin dump: the <metadata> argument is empty: give a path [EINVAL]"],
    [['receive', '-i', '', '--target', 't'], 'dmthin receive: --input is empty: give a path [EINVAL]'],
    [['receive', '-i', 's', '--target', ''], 'dmthin receive: --target is empty: give a path [EINVAL]'],
    [['receive', '-i', 's', '--target', 't', '--state', ''], 'dmthin receive: --state is empty: give a path [EINVAL]'],
    [['send', '--metadata', '', '--data', 'd', '--snap', '1', '--size', '1M'], 'dmthin send: --metadata is empty: give a path [EINVAL]'],
    [['pool', 'status', ''], 'dmthin pool status: the <name> argument is empty: give a name [EINVAL]'],
    [['backups', 'list', '--repo', ''], 'dmthin backups list: --repo is empty: give a repository path or URL [EINVAL]'],
  ])('dmthin %j', (args, line) => {
    const r = runCli(args);
    expect(r.status).toBe(1);
    expect(oneLine(r)).toBe(line);
  });

  test('receive -i: a missing file and a directory are named, with what to give instead', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dmthin-recv-'));
    try {
      const missing = join(dir, 'nonexist');
      const r1 = runCli(['receive', '-i', missing, '--target', join(dir, 't')]);
      expect(r1.status).toBe(1);
      expect(oneLine(r1)).toBe(`dmthin receive: --input ${missing}: no such file; give the stream file dmthin send wrote, or '-' to read it from stdin [ENOENT]`);
      const r2 = runCli(['receive', '-i', dir, '--target', join(dir, 't')]);
      expect(r2.status).toBe(1);
      expect(oneLine(r2)).toBe(`dmthin receive: --input ${dir} is a directory; give the stream file dmthin send wrote, or '-' to read it from stdin [EISDIR]`);
      expect(readdirSync(dir)).toEqual([]); // no target made
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('input that is not binary metadata: named, and thin_dump XML said so (outside review: no file name, no hint)', () => {
  test('XML (short, and long enough to hold a superblock), text, random bytes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dmthin-notmeta-'));
    try {
      const xml = readFileSync(join(REPO_ROOT, 'examples', 'pool.xml'));
      const short = join(dir, 'pool.xml');
      writeFileSync(short, xml);
      const long = join(dir, 'long.xml');
      writeFileSync(long, Buffer.concat([xml, Buffer.alloc(8192, 0x20)]));
      const text = join(dir, 'page.html');
      writeFileSync(text, Buffer.concat([Buffer.from('<html>\n'), Buffer.alloc(8192, 0x20)]));
      const rnd = join(dir, 'random.bin');
      writeFileSync(rnd, Buffer.from(Array.from({ length: 8192 }, (_, i) => (i * 7919 + 13) & 0xff)));
      // What a stream starts with (docs/stream-format.md): a record header, then the header record's magic.
      const stream = join(dir, 'backup.stream');
      writeFileSync(stream, Buffer.concat([Buffer.from('DMTR'), Buffer.alloc(20), Buffer.from('DMTHSTRM'), Buffer.alloc(8192, 1)]));
      const hint = (f: string) => `: it looks like thin_dump XML; make a metadata image from it with 'thin_restore -i ${f} -o IMAGE' and give the image`;
      const cases: [string[], string][] = [
        [['dump', short], `dmthin dump: ${short} is ${xml.length} bytes: too small to hold a superblock${hint(short)} [EUCLEAN]`],
        [['ls', long], `dmthin ls: ${long} is not binary pool metadata (bad checksum in superblock (block 0))${hint(long)} [EILSEQ]`],
        [['delta', '--snap1', '1', '--snap2', '2', text], `dmthin delta: ${text} is not binary pool metadata (bad checksum in superblock (block 0)): it starts with '<', as text does [EILSEQ]`],
        [['rmap', '--region', '0..1', rnd], `dmthin rmap: ${rnd}: bad checksum in superblock (block 0) [EILSEQ]`],
        // A send stream (found by an outside hunt: "bad checksum in superblock" only).
        [['dump', stream], `dmthin dump: ${stream} is a dmthin send stream, not pool metadata (bad checksum in superblock (block 0)): 'dmthin receive' reads it [EILSEQ]`],
        [['ls', stream], `dmthin ls: ${stream} is a dmthin send stream, not pool metadata (bad checksum in superblock (block 0)): 'dmthin receive' reads it [EILSEQ]`],
      ];
      for (const [args, line] of cases) {
        const r = runCli(args);
        expect(r.status).toBe(1);
        expect(oneLine(r)).toBe(line);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

test('a symlink loop as METADATA: one "cannot open" line, stdout a pipe or a file alike (outside review: Node\'s raw stat message with stdout on a file, "no such file ... live pool" on a pipe)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'dmthin-loop-'));
  try {
    const a = join(dir, 'loop1');
    symlinkSync(join(dir, 'loop2'), a);
    symlinkSync(a, join(dir, 'loop2'));
    const want = (cmd: string) => `dmthin ${cmd}: cannot open ${a} for reading: too many levels of symbolic links [ELOOP]`;
    for (const cmd of ['dump', 'ls', 'check']) {
      const r = runCli([cmd, a]);
      expect([r.status, oneLine(r)]).toEqual([1, want(cmd)]);
      const out = join(dir, `${cmd}.out`);
      const fd = openSync(out, 'w');
      try {
        const f = spawnSync(process.execPath, [CLI, cmd, a], { stdio: ['ignore', fd, 'pipe'], encoding: 'utf8' });
        expect([f.status, f.stderr]).toEqual([1, `${want(cmd)}\n`]);
      } finally {
        closeSync(fd);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

describe('send: which of --pool/--metadata and --data/--device', () => {
  test.each([
    [['--snap', '1'], 'give --pool (a live pool) or --metadata (offline images): one of them is needed'],
    [['--snap', '1', '--pool', 'p', '--metadata', 'm'], 'give --pool (a live pool) or --metadata (offline images), not both'],
    [['--snap', '1', '--metadata', 'm', '--data', 'd', '--device', 'v'], 'with --metadata give --data (pool data device) or --device (thin device), not both'],
    [['--snap', '1', '--metadata', 'm'], 'with --metadata give --data (pool data device) or --device (thin device): one of them is needed'],
    // The range is stated.
    [['--snap', '1', '--metadata', 'm', '--data', 'd', '--size', '8P'], '--size out of range: 8P (at most 9007199254740991 bytes, 2^53-1, just under 8P)'],
  ])('dmthin send %j', (args, text) => {
    const r = runCli(['send', ...args, '-o', join(tmpdir(), 'never-written')]);
    expect(r.status).toBe(1);
    expect(oneLine(r)).toBe(`dmthin send: ${text} [EINVAL]`);
  });
});

describe('dump --dev-id and -r', () => {
  // Ids past the kernel's 24 bits: thin_restore writes them, thin_dump dumps them,
  // and an id the metadata does not hold is ignored with exit 0, whatever its size.
  itOracle('an id >= 2^24 is dumped when the metadata holds it and ignored otherwise, as thin_dump 0.9.0', () => {
    const big = restoreFlat(
      [
        '<superblock uuid="" time="1" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="100">',
        '  <device dev_id="5" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">',
        '  </device>',
        '  <device dev_id="16777216" mapped_blocks="1" transaction="0" creation_time="0" snap_time="0">',
        '    <single_mapping origin_block="0" data_block="0" time="0"/>',
        '  </device>',
        '</superblock>',
        '',
      ].join('\n'),
      4 << 20,
      'dev-id-big',
    );
    try {
      for (const [path, ids] of [
        [image.path, ['16777216']],
        [image.path, ['99999999999999999999999']],
        [big.path, ['16777216']],
        [big.path, ['16777217', '5']],
      ] as [string, string[]][]) {
        const args = [...ids.flatMap((id) => ['--dev-id', id]), path];
        const ref = runOracle('thin_dump', args);
        const ours = runCli(['dump', ...args]);
        expect([args, ours.status, ours.stderr, ours.stdout]).toEqual([args, ref.status, '', ref.stdout]);
        expect(ref.status).toBe(0);
      }
      expect(runCli(['dump', '--dev-id', '16777216', big.path]).stdout).toContain('dev_id="16777216"');
    } finally {
      big.cleanup();
    }
  });

  test('-r/--repair is refused by name, saying what to use instead', () => {
    for (const flag of ['-r', '--repair']) {
      const r = runCli(['dump', flag, image.path]);
      expect(r.status).toBe(1);
      expect(oneLine(r)).toBe('dmthin dump: -r/--repair is not supported (dump never repairs): find the damage with dmthin check, and write a repaired copy with thin_repair [EINVAL]');
    }
  });
});

const root = process.getuid?.() === 0;
const rootTest = root ? test : test.skip;
const NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];

/** A misc-device minor no driver registered: opening a node of it is what a kernel without device-mapper answers. */
function unusedMiscMinor(): number {
  const used = new Set(
    readFileSync('/proc/misc', 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => Number(l.trim().split(/\s+/)[0])),
  );
  // 236 is device-mapper's own minor: use it when this kernel has no dm.
  for (const m of [236, ...Array.from({ length: 255 }, (_, i) => i + 1)]) if (!used.has(m)) return m;
  throw new Error('no unused misc minor');
}

/** The CLI in a private mount namespace whose /dev/mapper is an empty tmpfs, after `setup` (a shell snippet). */
function inPrivateDevMapper(setup: string, args: string[], asNobody = false) {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const cmd = [...(asNobody ? NOBODY : []), process.execPath, CLI, ...args].map(q).join(' ');
  // A private, empty /dev/mapper: a tmpfs over it, or (a machine without
  // one: no device-mapper loaded) over /dev, with the few nodes Node uses.
  const privateMapper =
    'if [ -d /dev/mapper ]; then mount -t tmpfs none /dev/mapper; else mount -t tmpfs none /dev; ' +
    'mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 666 /dev/urandom c 1 9; mkdir /dev/mapper; fi';
  const r = spawnSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-ec', `${privateMapper}; ${setup}; exec ${cmd}`], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  if (r.error) throw r.error;
  return r;
}

test('delta --root1/--root2 naming a node of the top-level or the details tree: a usage error (outside hunt F and review: exit 0, device ids read as virtual blocks)', () => {
  using basic = fixtureFile('basic');
  using many = fixtureFile('many-devices');
  // basic's superblock: the top-level mapping tree at block 7, the details tree at block 6; many-devices' top-level tree has a second level.
  const below = listNodes(fixtureImage('many-devices')).find((n) => n.tree === 'top' && n.level === 2)!;
  expect(below).toBeDefined();
  for (const [f, root, tree] of [
    [basic.path, 7, 'top-level mapping'],
    [basic.path, 6, 'device details'],
    [many.path, below.block, 'top-level mapping'],
  ] as const) {
    const r = runCli(['delta', '--root1', String(root), '--root2', String(root), f]);
    expect([r.status, r.stdout, r.stderr]).toEqual([1, '', `dmthin delta: left root ${root} is a node of the live metadata's ${tree} tree, not of a device's mapping tree: give a device's own root, or its id (--snap1/--snap2) [EINVAL]\n`]);
  }
});

// Found by outside hunt F: each value copied the list so far (O(n^2): 13 s for
// 40,000 --region, 42 s for 70,000 --dev-id). Linear because every repeatable
// option's parser appends in place; checked as such, not by a clock.
describe('repeatable options: values are appended in place, not copied per value', () => {
  test('collect returns the list it was given, with the value appended', () => {
    const acc = ['a'];
    expect(collect('b', acc)).toBe(acc);
    expect(acc).toEqual(['a', 'b']);
    expect(collect('x')).toEqual(['x']);
  });

  test("every option whose help says 'repeatable' is parsed by collect", () => {
    const program = new Command();
    for (const load of Object.values(COMMANDS)) load().register(program, () => undefined as never);
    const all = (c: Command): Command[] => [c, ...c.commands.flatMap(all)];
    const repeatable = all(program).flatMap((c) => c.options.filter((o) => /repeatable/.test(o.description)).map((o) => [c.name(), o.long, o.parseArg] as const));
    expect(repeatable.map(([c, o]) => `${c} ${o}`)).toEqual(expect.arrayContaining(['rmap --region', 'dump --dev-id']));
    for (const [c, o, parse] of repeatable) expect([c, o, parse === collect]).toEqual([c, o, true]);
  });

  test.each([
    ['rmap --region', (n: number) => [`--region`, `${n * 30}..${n * 30 + 10}`], ['rmap']],
    ['dump --dev-id', (n: number) => ['--dev-id', String(n + 100)], ['dump']],
  ] as const)('%s: 40,000 values are all taken', (_name, one, cmd) => {
    using f = fixtureFile('basic');
    const args: string[] = [...cmd];
    for (let n = 0; n < 40_000; n++) args.push(...one(n));
    const r = runCli([...args, f.path]);
    expect(r.signal).toBeNull();
    expect(r.status).toBe(0);
  });
});

describe('device-mapper missing, not root', () => {
  rootTest('no /dev/mapper/control: device-mapper is not available [ENOENT], no ioctl named', () => {
    for (const args of [['pool', 'status', 'p'], ['devices']]) {
      const r = inPrivateDevMapper(':', args);
      expect(r.status).toBe(1);
      const line = oneLine(r);
      expect(line).toBe(
        `dmthin ${args[0] === 'pool' ? 'pool status' : 'devices'}: device-mapper is not available: /dev/mapper/control does not exist; load it as root with 'modprobe dm_thin_pool' (which loads dm_mod too), then check that /dev/mapper/control exists ('dmsetup mknodes' creates it) [ENOENT]`,
      );
      expect(line).not.toMatch(/DM_|ioctl/);
    }
  });

  rootTest('the node but no driver: device-mapper is not available [ENODEV]', () => {
    const r = inPrivateDevMapper(`mknod -m 600 /dev/mapper/control c 10 ${unusedMiscMinor()}`, ['pool', 'status', 'p']);
    expect(r.status).toBe(1);
    expect(oneLine(r)).toBe(
      "dmthin pool status: device-mapper is not available: /dev/mapper/control exists but the kernel has no device-mapper driver; load it as root with 'modprobe dm_thin_pool' (which loads dm_mod too) [ENODEV]",
    );
  });

  rootTest('a user who cannot open the control node: needs root [EACCES]', () => {
    const r = inPrivateDevMapper(`mknod -m 600 /dev/mapper/control c 10 ${unusedMiscMinor()}`, ['devices'], true);
    expect(r.status).toBe(1);
    expect(oneLine(r)).toBe('dmthin devices: needs root (CAP_SYS_ADMIN): cannot open /dev/mapper/control: permission denied; run as root (e.g. with sudo) [EACCES]');
  });

  rootTest('a user who cannot open a block device: needs root [EACCES]; a regular file keeps the plain reason', () => {
    const r = inPrivateDevMapper('mknod -m 600 /dev/mapper/meta b 7 0', ['ls', '/dev/mapper/meta'], true);
    expect(r.status).toBe(1);
    expect(oneLine(r)).toBe(
      'dmthin ls: needs root (CAP_SYS_ADMIN): cannot open block device /dev/mapper/meta for reading: permission denied; run as root (e.g. with sudo), or give this user access to the device [EACCES]',
    );
    // Only root may read the image (0600); the user is told about permission, not root.
    const f = inPrivateDevMapper(`cp ${image.path} /dev/mapper/image.bin; chmod 600 /dev/mapper/image.bin`, ['dump', '/dev/mapper/image.bin'], true);
    expect(f.status).toBe(1);
    expect(oneLine(f)).toBe('dmthin dump: cannot open /dev/mapper/image.bin for reading: permission denied [EACCES]');
  });
});

describe('native addon missing or unloadable', () => {
  let dir: string;
  beforeAll(() => {
    // A package without build/: dist and package.json, node_modules for commander.
    dir = mkdtempSync(join(tmpdir(), 'dmthin-noaddon-'));
    cpSync(join(REPO_ROOT, 'dist'), join(dir, 'dist'), { recursive: true });
    cpSync(join(REPO_ROOT, 'package.json'), join(dir, 'package.json'));
    symlinkSync(join(REPO_ROOT, 'node_modules'), join(dir, 'node_modules'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const run = (args: string[]) => spawnSync(process.execPath, [join(dir, 'dist', 'cli', 'main.js'), ...args], { encoding: 'utf8', timeout: 120_000 });
  const REBUILD = "run 'npm rebuild dmthin' in the project that installed it (in a dmthin clone: 'npm run build:native'); building needs python3, make, g++ and the Node.js headers";
  const notBuilt = () => `dmthin's native addon is not built (${join(dir, 'build', 'Release', 'dmthin.node')} does not exist): ${REBUILD} [MODULE_NOT_FOUND]`;

  test('not built: device-mapper commands fail with one line and the fix [MODULE_NOT_FOUND]; --help, --version and usage errors work', () => {
    for (const [cmd, args] of [
      ['pool status', ['pool', 'status', 'p']],
      ['devices', ['devices']],
    ] as const) {
      const r = run([...args]);
      expect(r.status).toBe(1);
      expect(oneLine(r)).toBe(`dmthin ${cmd}: ${notBuilt()}`);
    }
    expect(run(['--version'])).toMatchObject({ status: 0, stderr: '' });
    expect(run(['dump', '--help'])).toMatchObject({ status: 0, stderr: '' });
    expect(oneLine(run(['dump', '--bogus']))).toBe("dmthin dump: unknown option '--bogus'; see 'dmthin dump --help' [EINVAL]");
  });

  test('not built: receive stops with the SetupError before anything is written, and leaves no lock file (outside hunt S: its .lock stayed behind)', () => {
    const d = mkdtempSync(join(tmpdir(), 'dmthin-noaddon-recv-'));
    try {
      const stream = join(d, 's');
      writeFileSync(stream, 'not even a stream');
      const target = join(d, 't.img');
      const r = run(['receive', '--target', target, '--create', '-i', stream]);
      expect(r.status).toBe(1);
      expect(oneLine(r)).toBe(`dmthin receive: cannot lock ${target}.dmthin-state.json.lock for the receive: ${notBuilt()}`);
      expect(readdirSync(d)).toEqual(['s']);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });

  rootTest('not built: a block device needs the addon (its size takes an ioctl)', () => {
    const d = mkdtempSync(join(tmpdir(), 'dmthin-blk-'));
    try {
      const blk = join(d, 'meta');
      expect(spawnSync('mknod', ['-m', '600', blk, 'b', '7', '0']).status).toBe(0);
      const r = run(['ls', blk]);
      expect(r.status).toBe(1);
      expect(oneLine(r)).toBe(`dmthin ls: ${notBuilt()}`);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });

  // Metadata image files need no addon: the portable CRC-32C and reader take over.
  itOracle('not built: dump, ls, delta and rmap of an image file still print what thin_* 0.9.0 print', () => {
    const snap = fixtureFile('shared-subtree');
    try {
      for (const [tool, args] of [
        ['thin_dump', ['dump', snap.path]],
        ['thin_dump', ['dump', '-f', 'human_readable', snap.path]],
        ['thin_ls', ['ls', '-o', 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,TRANSACTION', snap.path]],
        ['thin_delta', ['delta', '--snap1', '1', '--snap2', '2', '--verbose', snap.path]],
        // thin_rmap names one device per shared subtree (README): compared where nothing is shared.
        ['thin_rmap', ['rmap', '--region', '0..100000', image.path]],
      ] as const) {
        const ref = runOracle(tool, args.slice(1));
        const ours = run([...args]);
        expect([args.join(' '), ours.stderr, ours.status]).toEqual([args.join(' '), '', 0]);
        expect([args.join(' '), ours.stdout]).toEqual([args.join(' '), ref.stdout]);
      }
    } finally {
      snap.cleanup();
    }
  });

  itOracle('not built: check of an image file agrees with thin_check 0.9.0, also on a corrupted one', () => {
    const ref = runOracle('thin_check', [image.path]);
    const ours = run(['check', image.path]);
    expect([ours.status, ref.status]).toEqual([0, 0]);
    const bad = readFileSync(image.path);
    bad[4096 + 100] ^= 0xff; // a byte inside block 1: its checksum no longer matches
    const f = tempImageCopy(bad);
    try {
      const r = runOracle('thin_check', [f.path]);
      const o = run(['check', '-q', f.path]);
      expect(r.status).not.toBe(0);
      expect(o.status).toBe(r.status);
    } finally {
      f.cleanup();
    }
  });

  test("present but not loadable: one line with the loader's reason and the fix [ERR_DLOPEN_FAILED]", () => {
    mkdirSync(join(dir, 'build', 'Release'), { recursive: true });
    const node = join(dir, 'build', 'Release', 'dmthin.node');
    writeFileSync(node, Buffer.alloc(4096, 0x41));
    try {
      const r = run(['pool', 'status', 'p']);
      expect(r.status).toBe(1);
      const line = oneLine(r);
      expect(line.startsWith(`dmthin pool status: dmthin's native addon does not load (${node}: `)).toBe(true);
      expect(line.endsWith(`): ${REBUILD} [ERR_DLOPEN_FAILED]`)).toBe(true);
    } finally {
      rmSync(join(dir, 'build'), { recursive: true, force: true });
    }
  });
});
