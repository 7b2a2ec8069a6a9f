/**
 * An output path that names an input is refused before anything is written:
 * the same file by device and inode, also through a symlink or a hard link.
 * The input is byte-identical afterwards. And a Ctrl-C/SIGTERM during
 * `-o FILE` leaves FILE as it was and no temporary file; a SIGKILL leaves
 * FILE as it was, and the rerun removes the killed run's temporary file.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, closeSync, constants, existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { CLI, runCli } from './run-cli';
import { makeInputs, SIZE, type Inputs } from './output-helpers';
import { sha256File } from '../stream/helpers';
import { fixtureImage, itOracle, largeImage, runOracle } from '../helpers/fixtures';
import { withHeldRoot } from '../helpers/corrupt';
import { testAsRoot } from '../helpers/root';

let i: Inputs;
let links: { sym: (p: string) => string; hard: (p: string) => string };
beforeAll(async () => {
  i = await makeInputs();
  let n = 0;
  links = {
    sym: (p) => {
      const l = i.s.path(`sym${n++}`);
      symlinkSync(p, l);
      return l;
    },
    hard: (p) => {
      const l = i.s.path(`hard${n++}`);
      linkSync(p, l);
      return l;
    },
  };
}, 120_000);
afterAll(() => i?.s.cleanup());

type Via = 'the same path' | 'a symlink' | 'a hard link';
const VIAS: Via[] = ['the same path', 'a symlink', 'a hard link'];
const via = (v: Via, p: string) => (v === 'a symlink' ? links.sym(p) : v === 'a hard link' ? links.hard(p) : p);

/** [case, the input that must survive, args given the colliding output path] */
const cases: [string, () => string, (out: string) => string[]][] = [
  ['dump -o METADATA', () => i.big, (o) => ['dump', '-o', o, i.big]],
  ['delta -o METADATA', () => i.big, (o) => ['delta', '--snap1', '1', '--snap2', '2', '-o', o, i.big]],
  ['rmap -o METADATA', () => i.big, (o) => ['rmap', '--region', '0..1000', '-o', o, i.big]],
  ['send -o --metadata', () => i.meta, (o) => ['send', '--metadata', i.meta, '--data', i.data, '--snap', '4', '--size', String(SIZE), '-o', o]],
  ['send -o --data', () => i.data, (o) => ['send', '--metadata', i.meta, '--data', i.data, '--snap', '4', '--size', String(SIZE), '-o', o]],
  ['send -o --device', () => i.data, (o) => ['send', '--metadata', i.meta, '--device', i.data, '--snap', '4', '--size', String(SIZE), '-o', o]],
  ['receive --state --input', () => i.stream, (o) => ['receive', '--target', i.s.path('rtarget-in'), '--create', '-i', i.stream, '--state', o]],
];

describe.each(VIAS)('through %s', (v) => {
  test.each(cases)('%s is refused, the input unchanged', (_name, input, args) => {
    const before = sha256File(input());
    const out = via(v, input());
    const r = runCli(args(out));
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^dmthin [a-z]+: the (output file|stream output|state file|receive state file)\b.* is the .*: writing there would destroy it; choose another path \[EINVAL\]\n$/);
    expect(sha256File(input())).toBe(before);
  });

  test('receive --state TARGET is refused, the target unchanged', () => {
    const t = i.s.path(`target-${v.replace(/ /g, '-')}`);
    writeFileSync(t, Buffer.alloc(SIZE, 7));
    const before = sha256File(t);
    const r = runCli(['receive', '--target', t, '-i', i.stream, '--state', via(v, t)]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/is the target.*: writing there would destroy it/);
    expect(sha256File(t)).toBe(before);
  });
});

test('receive --create --state TARGET, the target not made yet: refused, nothing created (also through another spelling of the path)', () => {
  for (const [n, spell] of [
    ['same', (t: string) => t],
    ['dotted', (t: string) => join(dirname(t), '.', '..', basename(dirname(t)), basename(t))],
  ] as const) {
    const t = i.s.path(`new-target-${n}`);
    const r = runCli(['receive', '--target', t, '--create', '-i', i.stream, '--state', spell(t)]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^dmthin receive: the (receive )?state file .* is the target.*: writing there would destroy it; choose another path \[EINVAL\]\n$/);
    expect(existsSync(t)).toBe(false);
  }
});

test('the same place however spelled, before it exists: a dangling symlink to the other, and lnk/.. through a symlinked directory (found by an outside hunt)', () => {
  const base = i.s.path(`spell-${Date.now()}`);
  mkdirSync(join(base, 'real', 'sub'), { recursive: true });
  symlinkSync(join(base, 'real', 'sub'), join(base, 'lnk'));
  symlinkSync('s.json', join(base, 't.img')); // the target, a link to the state path (neither exists)
  const cases: [string, string][] = [
    [join(base, 't.img'), join(base, 's.json')],
    // lnk/.. is real (the kernel follows lnk first), not base.
    [join(base, 'lnk') + '/../t2.img', join(base, 'real', 't2.img')],
  ];
  for (const [target, state] of cases) {
    const r = runCli(['receive', '--target', target, '--create', '-i', i.stream, '--state', state]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/is the target .*: writing there would destroy it; choose another path \[EINVAL\]\n$/);
    expect(existsSync(state)).toBe(false);
  }
});

test('receive --create through a dangling symlink: the state is kept beside the file the link leads to, where any path to that file finds it (found by an outside hunt)', () => {
  const base = i.s.path(`dangle-${Date.now()}`);
  mkdirSync(join(base, 'sl'), { recursive: true });
  symlinkSync('../real.img', join(base, 'sl', 'link.img'));
  const r = runCli(['receive', '--target', join(base, 'sl', 'link.img'), '--create', '-i', i.stream, '-q']);
  expect([r.status, r.stderr]).toEqual([0, '']);
  expect(existsSync(join(base, 'real.img'))).toBe(true);
  // Before: sl/link.img.dmthin-state.json, which the real path (base/real.img) does not look for.
  expect(existsSync(join(base, 'real.img.dmthin-state.json'))).toBe(true);
  expect(existsSync(join(base, 'sl', 'link.img.dmthin-state.json'))).toBe(false);
});

test('-o as the kernel opens it: /dev/stdout on a pipe is written in place, lnk/../x lands in the directory lnk leads to (both doubtful in stop 39)', () => {
  const plain = runCli(['dump', i.meta]);
  expect(plain.status).toBe(0);
  // Before: "cannot create a temporary file beside /dev/stdout" (the magic link's text leads nowhere).
  // A shell's pipe (spawnSync's own stdout is a socket, which no path opens).
  const piped = spawnSync('bash', ['-c', 'set -o pipefail; "$0" "$1" dump -o /dev/stdout "$2" | cat', process.execPath, CLI, i.meta], { encoding: 'utf8', maxBuffer: 1 << 30 });
  expect(piped.stderr).toBe('');
  expect(piped.status).toBe(0);
  expect(piped.stdout).toBe(plain.stdout);
  const base = i.s.path(`dotdot-${Date.now()}`);
  mkdirSync(join(base, 'real', 'sub'), { recursive: true });
  symlinkSync(join(base, 'real', 'sub'), join(base, 'lnk'));
  const r = runCli(['dump', '-o', join(base, 'lnk') + '/../x.xml', i.meta]);
  expect(r.status).toBe(0);
  // Before: written to base/x.xml (the path folded as text).
  expect(existsSync(join(base, 'x.xml'))).toBe(false);
  expect(readFileSync(join(base, 'real', 'x.xml'), 'utf8')).toBe(plain.stdout);
});

test('-o A/../NAME where A leads elsewhere is not NAME: written beside A\'s target, not refused as the input; /dev/fd/N of a removed file is written there, no "(deleted)" file made (outside hunt)', () => {
  const plain = runCli(['dump', i.meta]);
  const base = i.s.path(`fd-${Date.now()}`);
  mkdirSync(join(base, 'real', 'sub'), { recursive: true });
  symlinkSync(join(base, 'real', 'sub'), join(base, 'A'));
  const meta = join(base, 'meta.bin');
  writeFileSync(meta, readFileSync(i.meta));
  // Before: refused ("is the metadata input"): the paths were compared as text.
  const r = runCli(['dump', '-o', join(base, 'A') + '/../meta.bin', meta]);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  expect(readFileSync(join(base, 'real', 'meta.bin'), 'utf8')).toBe(plain.stdout);
  expect(readFileSync(meta)).toEqual(readFileSync(i.meta));
  // Before: exit 0, nothing on fd 3, and a new file "victim (deleted)" beside it.
  const sh = spawnSync('bash', ['-c', 'exec 3>"$3/victim"; rm "$3/victim"; "$0" "$1" dump -o /dev/fd/3 "$2" || exit 9; cat /dev/fd/3', process.execPath, CLI, i.meta, base], { encoding: 'utf8', maxBuffer: 1 << 30 });
  expect(sh.stderr).toBe('');
  expect(sh.status).toBe(0);
  expect(sh.stdout).toBe(plain.stdout);
  expect(readdirSync(base).sort()).toEqual(['A', 'meta.bin', 'real']);
});

test('-o /dev/stdout (/dev/fd/1, /proc/self/fd/1) onto a file the shell opened is stdout itself: written at its offset, between what the shell writes (outside hunt: a temporary file replaced the file, the header and footer lost)', () => {
  const plain = runCli(['dump', i.meta]).stdout;
  for (const alias of ['/dev/stdout', '/dev/fd/1', '/proc/self/fd/1']) {
    const out = i.s.path(`framed-${alias.replace(/\//g, '_')}.txt`);
    const r = spawnSync('bash', ['-c', '{ echo header; "$0" "$1" dump -o "$3" "$2" || exit 9; echo footer; } > "$4"', process.execPath, CLI, i.meta, alias, out], { encoding: 'utf8' });
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    expect(readFileSync(out, 'utf8')).toBe(`header\n${plain}footer\n`);
  }
  // send -o /dev/stdout is the stream on stdout, as without -o.
  const framed = i.s.path('framed-send');
  const r = spawnSync('bash', ['-c', '"$0" "$1" send --metadata "$2" --data "$3" --snap 4 --size "$4" -o /dev/stdout -q > "$5"', process.execPath, CLI, i.meta, i.data, String(SIZE), framed], { encoding: 'utf8' });
  expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
  const direct = spawnSync(process.execPath, [CLI, 'send', '--metadata', i.meta, '--data', i.data, '--snap', '4', '--size', String(SIZE), '-q'], { maxBuffer: 1 << 30 });
  expect(readFileSync(framed).equals(direct.stdout)).toBe(true);
});

test('-o a name of 250 bytes: written (its temporary file takes a shortened name), as thin_dump writes it (outside hunt: ENAMETOOLONG)', () => {
  const dir = i.s.path(`long-${Date.now()}`);
  mkdirSync(dir);
  const out = join(dir, 'a'.repeat(250));
  const r = runCli(['dump', '-o', out, i.meta]);
  expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
  expect(readFileSync(out, 'utf8')).toBe(runCli(['dump', i.meta]).stdout);
  expect(readdirSync(dir)).toEqual(['a'.repeat(250)]);
});

test.each([240, 255])('receive into a target named by %i bytes: its default state file (and the lock beside it) takes a shortened name (before: ENAMETOOLONG on the lock)', (len) => {
  const dir = i.s.path(`long-rx-${len}`);
  mkdirSync(dir);
  const name = 't'.repeat(len);
  const target = join(dir, name);
  const r = runCli(['receive', '--target', target, '--create', '-i', i.stream, '--json', '-q']);
  expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
  const states = readdirSync(dir).filter((f) => f !== name);
  expect(states).toHaveLength(1);
  expect(Buffer.byteLength(states[0]) + '.lock'.length).toBeLessThanOrEqual(255);
  expect(states[0]).toMatch(/^t{160}~[0-9a-f]{16}\.dmthin-state\.json$/);
  expect(JSON.parse(r.stdout)).toMatchObject({ stateFile: join(dir, states[0]) });
  const short = join(dir, '..', `short-rx-${len}`);
  expect(runCli(['receive', '--target', short, '--create', '-i', i.stream, '-q']).status).toBe(0);
  expect(sha256File(target)).toBe(sha256File(short));
  // The next receive finds the same state: the same stream again is "already received" or applied as a full one, still exit 0.
  const again = runCli(['receive', '--target', target, '-i', i.stream, '-q']);
  expect({ status: again.status, stderr: again.stderr }).toEqual({ status: 0, stderr: '' });
  expect(readdirSync(dir).sort()).toEqual([name, states[0]].sort());
});

test('receive --state naming the file on stdin is refused', async () => {
  const before = sha256File(i.stream);
  const r = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
    const fd = openSync(i.stream, 'r');
    const p = spawn(process.execPath, [CLI, 'receive', '--target', i.s.path('rt-stdin'), '--create', '--state', i.stream], { stdio: [fd, 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('close', (status) => resolve({ status, stderr }));
  });
  expect(r.status).toBe(1);
  expect(r.stderr).toMatch(/is the input stream/);
  expect(sha256File(i.stream)).toBe(before);
});

describe('stdout that is the metadata input (1<>METADATA, >> METADATA) is refused before anything is written', () => {
  const stdoutCases: [string, (m: string) => string[]][] = [
    ['dump', (m) => ['dump', m]],
    ['ls', (m) => ['ls', m]],
    ['check', (m) => ['check', m]],
    ['delta', (m) => ['delta', '--snap1', '1', '--snap2', '2', m]],
    ['rmap', (m) => ['rmap', '--region', '0..1000', m]],
  ];
  test.each(stdoutCases)('%s', async (_name, args) => {
    const before = sha256File(i.big);
    for (const [flags, how] of [['r+', 'read-write'], ['a', 'appending']] as const) {
      const fd = openSync(via('a hard link', i.big), flags);
      const r = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
        const p = spawn(process.execPath, [CLI, ...args(i.big)], { stdio: ['ignore', fd, 'pipe'] });
        let stderr = '';
        p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
        p.on('close', (status) => resolve({ status, stderr }));
      });
      closeSync(fd);
      expect([how, r.status, r.stderr]).toEqual([how, 1, `dmthin ${args(i.big)[0]}: stdout is the metadata input ${i.big}: writing there would destroy it; send stdout elsewhere [EINVAL]\n`]);
      expect(sha256File(i.big)).toBe(before);
    }
  });

  test.each([
    ['--data', () => i.data, 'the data input (--data)'],
    ['--metadata', () => i.meta, 'the metadata input (--metadata)'],
  ])('send with stdout on its %s', async (_flag, input, role) => {
    const before = sha256File(input());
    const fd = openSync(input(), 'r+');
    const r = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
      const p = spawn(process.execPath, [CLI, 'send', '--metadata', i.meta, '--data', i.data, '--snap', '4', '--size', String(SIZE), '-q'], { stdio: ['ignore', fd, 'pipe'] });
      let stderr = '';
      p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      p.on('close', (status) => resolve({ status, stderr }));
    });
    closeSync(fd);
    expect([r.status, r.stderr]).toEqual([1, `dmthin send: stdout is ${role} ${input()}: writing there would destroy it; send stdout elsewhere [EINVAL]\n`]);
    expect(sha256File(input())).toBe(before);
  });
});

itOracle('an output path that does not exist yet is fine, also through a dangling symlink (the link target is created)', () => {
  const out = i.s.path('fresh.xml');
  expect(runCli(['dump', '-o', out, i.big]).status).toBe(0);
  const ref = runOracle('thin_dump', [i.big]).stdout;
  expect(readFileSync(out, 'utf8')).toBe(ref);
  const target = i.s.path('via-link.xml');
  const link = i.s.path('dangling');
  symlinkSync(target, link);
  expect(runCli(['dump', '-o', link, i.big]).status).toBe(0);
  expect(readFileSync(target, 'utf8')).toBe(ref);
  expect(lstatSync(link).isSymbolicLink()).toBe(true);
});

describe('SIGTERM during -o FILE', () => {
  let big: ReturnType<typeof largeImage>;
  itOracle(
    'leaves FILE as it was and no temporary file (exit 143)',
    async () => {
      big = largeImage(1_000_000);
      const dir = i.s.path('sigterm');
      mkdirSync(dir);
      const out = join(dir, 'backup.xml');
      writeFileSync(out, 'the previous backup\n');
      const r = await new Promise<{ status: number | null; stderr: string; sawTemp: boolean }>((resolve) => {
        const p = spawn(process.execPath, [CLI, 'dump', '-q', '-o', out, big.path], { stdio: ['ignore', 'ignore', 'pipe'] });
        let stderr = '';
        let sawTemp = false;
        p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        const poll = setInterval(() => {
          if (!sawTemp && readdirSync(dir).some((f) => f.endsWith('.tmp'))) {
            sawTemp = true;
            p.kill('SIGTERM');
          }
        }, 2);
        p.on('close', (status) => {
          clearInterval(poll);
          resolve({ status, stderr, sawTemp });
        });
      });
      expect(r.sawTemp).toBe(true);
      expect(r.status).toBe(143);
      expect(r.stderr).toMatch(/^dmthin dump: interrupted/);
      expect(readFileSync(out, 'utf8')).toBe('the previous backup\n');
      expect(readdirSync(dir)).toEqual(['backup.xml']);
    },
    600_000,
  );
});

/** The CLI's status, stderr and how long it took to end after `sig`, sent `after` ms in (stdout: 'ignore' or a descriptor). */
const signalled = (args: string[], after: number, sig: NodeJS.Signals = 'SIGTERM', stdout: 'ignore' | number = 'ignore') =>
  new Promise<{ status: number | null; stderr: string; ms: number }>((resolve) => {
    const p = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', stdout, 'pipe'] });
    let stderr = '';
    let sent = 0;
    p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const t = setTimeout(() => {
      sent = Date.now();
      p.kill(sig);
    }, after);
    const guard = setTimeout(() => p.kill('SIGKILL'), after + 15_000);
    p.on('close', (status) => {
      clearTimeout(t);
      clearTimeout(guard);
      resolve({ status, stderr, ms: Date.now() - sent });
    });
  });

describe('-o FIFO and a signal (outside hunt T: SIGINT and SIGTERM were ignored until a reader came, or read)', () => {
  test('no reader yet: the wait for one ends on SIGTERM (143, one line)', async () => {
    const fifo = i.s.path('no-reader.fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const r = await signalled(['dump', '-o', fifo, i.big], 700);
    expect([r.status, r.stderr]).toEqual([143, 'dmthin dump: interrupted [ABORT_ERR]\n']);
    expect(r.ms).toBeLessThan(5000);
  });

  test('a reader that stopped reading (the pipe full): the command ends on SIGTERM, not when the reader reads', async () => {
    const fifo = i.s.path('stalled-reader.fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    // Opened for reading here and never read: dump's 1.2 MB fill the pipe's 64 KiB and its write waits.
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      const r = await signalled(['dump', '-o', fifo, i.big], 1500);
      expect([r.status, r.stderr]).toEqual([143, 'dmthin dump: interrupted [ABORT_ERR]\n']);
      expect(r.ms).toBeLessThan(5000);
    } finally {
      closeSync(reader);
    }
  });
});

describe('stdout to a reader that stopped reading, and a signal (outside hunt G: rmap and ls waited for the reader, not the signal)', () => {
  let md: string;
  beforeAll(() => {
    md = i.s.path('many-devices.bin');
    writeFileSync(md, fixtureImage('many-devices'));
  });
  /** Runs the CLI with stdout a FIFO that is open and never read (its 64 KiB fill), SIGINT after `after` ms. */
  const stalled = async (args: string[], after: number, full = false) => {
    const fifo = i.s.path(`stalled-${args.join('_').replace(/[^\w.-]/g, '')}-${after}.fifo`);
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const writer = openSync(fifo, constants.O_WRONLY);
    if (full) {
      const filler = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
      try {
        for (;;) writeSync(filler, Buffer.alloc(4096));
      } catch (e) {
        expect((e as NodeJS.ErrnoException).code).toBe('EAGAIN');
      } finally {
        closeSync(filler);
      }
    }
    try {
      return await signalled(args, after, 'SIGINT', writer);
    } finally {
      closeSync(writer);
      closeSync(reader);
    }
  };
  // The pipe full before it runs (the reader stopped reading): its short report waits.
  test('backups init: the repository stands, so the line says so (review: it said only "interrupted" after the work was done)', async () => {
    const repo = i.s.path('stalled-init-repo');
    const r = await stalled(['backups', 'init', '--repo', repo], 1500, true);
    expect([r.status, r.stderr]).toEqual([130, `dmthin backups init: interrupted; the unencrypted repository ${repo} was created: only its report was lost [ABORT_ERR]\n`]);
    expect(readdirSync(repo)).toContain('config');
  });

  // Each prints ~77 KB on many-devices (dump 217 KB): more than the pipe holds. With -m, stdout's
  // end is held until the snapshot's check, then written: that last write ends on the signal too
  // (review: it waited for the reader).
  test.each([
    ['rmap', ['rmap', '--region', '0..1000000000'], false],
    ['ls --json', ['ls', '--json'], false],
    ['dump -m (the end held until the check)', ['dump', '-m'], true],
    ['rmap -m', ['rmap', '-m', '--region', '0..1000000000'], true],
  ])('%s: 130 and one line soon after SIGINT', async (_name, args, held) => {
    const input = held ? i.s.path(`many-devices-held-${args[0]}.bin`) : md;
    if (held) writeFileSync(input, withHeldRoot(fixtureImage('many-devices')).image);
    const r = await stalled([...args, input], 1500);
    expect([r.status, r.stderr]).toEqual([130, `dmthin ${args[0]}: interrupted [ABORT_ERR]\n`]);
    expect(r.ms).toBeLessThan(5000);
  });
});

describe('SIGKILL during -o FILE, then a rerun', () => {
  itOracle(
    'FILE is as it was after the kill; the rerun writes it whole and removes the dead run\'s temporary file, not a live one\'s',
    async () => {
      const big = largeImage(1_000_000);
      const dir = i.s.path('sigkill');
      mkdirSync(dir);
      const out = join(dir, 'backup.xml');
      writeFileSync(out, 'the previous backup\n');
      const killed = await new Promise<{ signal: NodeJS.Signals | null; sawTemp: boolean }>((resolve) => {
        const p = spawn(process.execPath, [CLI, 'dump', '-q', '-o', out, big.path], { stdio: 'ignore' });
        let sawTemp = false;
        const poll = setInterval(() => {
          if (!sawTemp && readdirSync(dir).some((f) => f.endsWith('.tmp'))) {
            sawTemp = true;
            p.kill('SIGKILL');
          }
        }, 2);
        p.on('close', (_status, signal) => {
          clearInterval(poll);
          resolve({ signal, sawTemp });
        });
      });
      expect(killed).toEqual({ signal: 'SIGKILL', sawTemp: true });
      expect(readFileSync(out, 'utf8')).toBe('the previous backup\n');
      const dead = readdirSync(dir).filter((f) => f.endsWith('.tmp'));
      expect(dead).toHaveLength(1);
      // A temporary file of a live process (this one: another dmthin writing FILE now) and a name of another shape stay.
      const live = `.backup.xml.dmthin-${process.pid}-0123abcd.tmp`;
      writeFileSync(join(dir, live), 'in progress\n');
      writeFileSync(join(dir, '.backup.xml.dmthin-notes.tmp'), 'not ours\n');
      const r = runCli(['dump', '-q', '-o', out, big.path], { timeoutMs: 300_000 });
      expect(r.status).toBe(0);
      const whole = runCli(['dump', big.path], { timeoutMs: 300_000 });
      expect(readFileSync(out, 'utf8')).toBe(whole.stdout);
      expect(readdirSync(dir).sort()).toEqual(['.backup.xml.dmthin-notes.tmp', live, 'backup.xml'].sort());
    },
    600_000,
  );
});

describe('a signal once stderr is gone (outside hunt G: a closed terminal, a reader of stderr that exited)', () => {
  // The "interrupted" line could not be written: process.stderr raised an
  // 'error' event nothing handled, and the process ended with 1 before its
  // cleanups ran, leaving -o's temporary file.
  for (const sig of ['SIGINT', 'SIGHUP'] as const) {
    itOracle(
      `${sig} during -o FILE: 128+n, FILE as it was, no temporary file`,
      async () => {
        const big = largeImage(1_000_000);
        const dir = i.s.path(`stderr-gone-${sig}`);
        mkdirSync(dir);
        const out = join(dir, 'backup.xml');
        writeFileSync(out, 'the previous backup\n');
        const r = await new Promise<{ status: number | null; signal: NodeJS.Signals | null; sawTemp: boolean }>((resolve) => {
          const p = spawn(process.execPath, [CLI, 'dump', '-q', '-o', out, big.path], { stdio: ['ignore', 'ignore', 'pipe'] });
          let sawTemp = false;
          const poll = setInterval(() => {
            if (!sawTemp && readdirSync(dir).some((f) => f.endsWith('.tmp'))) {
              sawTemp = true;
              p.stderr.destroy(); // our end of its stderr: its next write there fails (EPIPE)
              p.kill(sig);
            }
          }, 2);
          p.on('close', (status, signal) => {
            clearInterval(poll);
            resolve({ status, signal, sawTemp });
          });
        });
        expect(r).toEqual({ status: sig === 'SIGINT' ? 130 : 129, signal: null, sawTemp: true });
        expect(readFileSync(out, 'utf8')).toBe('the previous backup\n');
        expect(readdirSync(dir)).toEqual(['backup.xml']);
      },
      600_000,
    );
  }
});

describe('the library refuses the same collisions (no CLI in between)', () => {
  test('send() with output naming its metadata or data', async () => {
    const { send } = await import('../../src/ops/send');
    for (const output of [() => i.meta, () => links.hard(i.data)]) {
      const before = sha256File(i.meta) + sha256File(i.data);
      await expect(send({ metadata: i.meta, data: i.data, snap: 4, deviceSize: SIZE, output: output() })).rejects.toMatchObject({ name: 'UsageError', code: 'EINVAL' });
      expect(sha256File(i.meta) + sha256File(i.data)).toBe(before);
    }
  });
  test('receive() with stateFile naming the target or the input', async () => {
    const { receive } = await import('../../src/ops/receive');
    const t = i.s.path('lib-target');
    writeFileSync(t, Buffer.alloc(SIZE, 3));
    const before = sha256File(t) + sha256File(i.stream);
    for (const stateFile of [t, links.sym(i.stream)]) {
      await expect(receive({ target: t, input: i.stream, stateFile })).rejects.toMatchObject({ name: 'UsageError', code: 'EINVAL' });
    }
    expect(sha256File(t) + sha256File(i.stream)).toBe(before);
  });
});

describe('-o FILE is refused where open(O_WRONLY) would be, though a rename could replace it', () => {
  const pool = join(__dirname, '..', '..', 'examples', 'pool.bin');
  // The caller may not write the file (mode 0444, its own): `> FILE` says Permission denied.
  // Root may write any file, so the caller is another user (nobody).
  testAsRoot('a file its caller may not write: EACCES, the file unchanged', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dmthin-ro-'));
    try {
      chmodSync(dir, 0o755);
      chownSync(dir, 65534, 65534);
      const ro = join(dir, 'ro.xml');
      writeFileSync(ro, 'precious\n', { mode: 0o444 });
      chownSync(ro, 65534, 65534);
      for (const args of [['dump', '-o', ro, pool], ['send', '--metadata', pool, '--data', pool, '--snap', '1', '--size', '512', '-o', ro]]) {
        const r = spawnSync(process.execPath, [CLI, ...args], { uid: 65534, gid: 65534, cwd: dir, encoding: 'utf8', env: { ...process.env, DMTHIN_CODE_CACHE: '0' } });
        expect(r.stderr).toMatch(/cannot open .*ro\.xml: permission denied \[EACCES\]\n$/);
        expect(r.status).toBe(1);
        expect(readFileSync(ro, 'utf8')).toBe('precious\n');
        expect(readdirSync(dir)).toEqual(['ro.xml']);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  test('a path ending in / that names no directory: EISDIR, nothing made', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dmthin-slash-'));
    try {
      const r = runCli(['dump', '-o', join(dir, 'newdir') + '/', pool]);
      expect(r.stderr).toMatch(/cannot write .*newdir\/: a path ending in \/ names a directory, and there is none \[EISDIR\]\n$/);
      expect(r.status).toBe(1);
      expect(readdirSync(dir)).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
