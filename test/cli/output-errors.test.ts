/**
 * No output is lost silently: every command that writes output, run as a user
 * runs it, to /dev/full, to a full tmpfs and into a closed pipe. A lost byte is
 * exit 1 with one line on stderr; a closed pipe ends quietly with 141 (as the
 * reference tools, killed by SIGPIPE, look to a shell); `-o FILE` never leaves
 * a partial, empty or temporary file and never harms an existing FILE.
 *
 * pool status, devices, message and pool reserve-metadata-snap need a live
 * pool: their stdout goes through the same main()/guardStdio() path that
 * `--help` and `--version` take here, and stdout-guard.test.ts covers it
 * directly.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  fileCommands,
  gateMount,
  intoHead,
  makeInputs,
  mountSmallTmpfs,
  runIntoClosedPipe,
  runToFd,
  runToFile,
  stdoutCommands,
  type Inputs,
} from './output-helpers';
import { scratch } from '../stream/helpers';
import { itOracle, runOracle } from '../helpers/fixtures';
import { testAsRoot } from '../helpers/root';
import { CLI, runCli } from './run-cli';

let i: Inputs;
beforeAll(async () => {
  i = await makeInputs();
}, 120_000);
afterAll(() => i?.s.cleanup());

// The command lists only need paths; they are filled in once the inputs exist.
const names = stdoutCommands({ s: { dir: '', path: (n) => n, cleanup: () => undefined }, big: '', meta: '', data: '', stream: '' }).map(([n]) => n);
const cmd = (name: string) => stdoutCommands(i).find(([n]) => n === name)![1]();
const fileNames = fileCommands({ s: { dir: '', path: (n) => n, cleanup: () => undefined }, big: '', meta: '', data: '', stream: '' }).map(([n]) => n);
const fileCmd = (name: string, out: string) => fileCommands(i).find(([n]) => n === name)![1](out);

function expectOneErrorLine(stderr: string, code: string): void {
  const lines = stderr.split('\n');
  expect(lines[lines.length - 1]).toBe('');
  expect(lines.slice(0, -1)).toHaveLength(1);
  expect(lines[0]).toMatch(new RegExp(`^dmthin( [a-z-]+)?: .* \\[${code}\\]$`));
}

describe('stdout to /dev/full: exit 1, one line on stderr', () => {
  test.each(names)('%s', (name) => {
    const fd = openSync('/dev/full', 'w');
    try {
      const r = runToFd(cmd(name), fd);
      expect(r.status).toBe(1);
      expectOneErrorLine(r.stderr, 'ENOSPC');
      expect(r.stderr).toMatch(/cannot write stdout: no space left on device/);
      // A receive that completed says so: only its report was lost (it is not to be run again as failed).
      if (name.startsWith('receive')) expect(r.stderr).toMatch(/; the stream was applied to \S+ and recorded in \S+: only its report was lost \[ENOSPC\]\n$/);
      else expect(r.stderr).toMatch(/; the output is incomplete \[ENOSPC\]\n$/);
      // A subcommand's help is that subcommand's output: its line is labelled with it.
      if (name === 'dump --help') expect(r.stderr.startsWith('dmthin dump: ')).toBe(true);
    } finally {
      closeSync(fd);
    }
  });
});

describe("send --json: its report goes to stderr and is part of exit 0's promise", () => {
  test('stderr /dev/full: exit 1, and the stream itself is whole', () => {
    const out = i.s.path('json-report.stream');
    const full = openSync('/dev/full', 'w');
    try {
      const r = spawnSync(process.execPath, [CLI, ...fileCmd('send -o', out), '--json'], { stdio: ['ignore', 'ignore', full], timeout: 120_000 });
      expect(r.status).toBe(1);
    } finally {
      closeSync(full);
    }
    expect(readFileSync(out).equals(readFileSync(i.stream))).toBe(true);
  });

  test('stderr a file: exit 0 and the JSON summary in it', () => {
    const out = i.s.path('json-report2.stream');
    const err = i.s.path('json-report.err');
    const fd = openSync(err, 'w');
    try {
      const r = spawnSync(process.execPath, [CLI, ...fileCmd('send -o', out), '--json'], { stdio: ['ignore', 'ignore', fd], timeout: 120_000 });
      expect(r.status).toBe(0);
    } finally {
      closeSync(fd);
    }
    expect(JSON.parse(readFileSync(err, 'utf8'))).toMatchObject({ records: expect.any(Number), bytes: statSync(out).size });
  });
});

describe('a closed pipe (EPIPE) ends quietly with 141', () => {
  test.each(names)('%s', async (name) => {
    const r = await runIntoClosedPipe(cmd(name));
    expect({ status: r.status, signal: r.signal, stderr: r.stderr }).toEqual({ status: 141, signal: null, stderr: '' });
  });

  test.each([
    ['dump', () => ['dump', i.big], '<superblock uuid="" '],
    ['rmap', () => ['rmap', '--region', '0..100000000', i.big], 'data 0..16 -> thin(2) 915456..915472'],
    ['delta --verbose', () => ['delta', '--verbose', '--snap1', '1', '--snap2', '2', i.big], '<superblock uuid="" '],
  ] as [string, () => string[], string][])('%s | head -1: the first line, then 141 and nothing on stderr', (_n, args, first) => {
    const r = intoHead(args());
    expect(r.line.startsWith(first)).toBe(true);
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 141, stderr: '' });
  });
});

describe('-o FILE to /dev/full: exit 1, one line', () => {
  test.each(fileNames)('%s', (name) => {
    const r = runCli(fileCmd(name, '/dev/full'));
    expect(r.status).toBe(1);
    expectOneErrorLine(r.stderr, 'ENOSPC');
    expect(r.stderr).toMatch(/cannot write \/dev\/full: no space left on device/);
    expect(statSync('/dev/full').isCharacterDevice()).toBe(true); // written in place, not renamed over
  });
});

describe('a full filesystem (64 KiB tmpfs)', () => {
  const mnt = scratch();
  const small = gateMount(mountSmallTmpfs(mnt.dir), 'output to a full filesystem');
  afterAll(() => {
    if (small && typeof small !== 'string') small.unmount();
    mnt.cleanup();
  });
  const t = small ? test : test.skip;

  describe('stdout into a file there: exit 1, one line', () => {
    t.each(names)('%s', (name) => {
      small!.reset();
      small!.fill(0);
      const r = runToFile(cmd(name), join(small!.dir, 'out'));
      expect(r.status).toBe(1);
      expectOneErrorLine(r.stderr, 'ENOSPC');
    });

    t('a short write is not lost: 8 KiB free and a 1.2 MB dump', () => {
      small!.reset();
      small!.fill(8192);
      const r = runToFile(cmd('dump'), join(small!.dir, 'out'));
      expect(r.status).toBe(1);
      expectOneErrorLine(r.stderr, 'ENOSPC');
    });
  });

  describe('-o FILE there (8 KiB free, outputs of hundreds of KiB)', () => {
    t.each(fileNames)('%s: a new FILE is not created, no temporary file is left', (name) => {
      small!.reset();
      small!.fill(8192);
      const out = join(small!.dir, 'new.out');
      const r = runCli(fileCmd(name, out));
      expect(r.status).toBe(1);
      expectOneErrorLine(r.stderr, 'ENOSPC');
      expect(existsSync(out)).toBe(false);
      expect(small!.files()).toEqual(['filler']);
    });

    t.each(fileNames)('%s: an existing FILE keeps its content, no temporary file is left', (name) => {
      small!.reset();
      const out = join(small!.dir, 'old.out');
      writeFileSync(out, 'the previous backup\n', { mode: 0o640 });
      small!.fill(8192);
      const r = runCli(fileCmd(name, out));
      expect(r.status).toBe(1);
      expectOneErrorLine(r.stderr, 'ENOSPC');
      expect(readFileSync(out, 'utf8')).toBe('the previous backup\n');
      expect(statSync(out).mode & 0o777).toBe(0o640);
      expect(small!.files()).toEqual(['filler', 'old.out']);
    });

    t("receive from a pipe, spooled there (--spool-dir): exit 1, one line naming the folder and --spool-dir; no target made", () => {
      small!.reset();
      small!.fill(8192);
      const target = i.s.path('spool-full.target');
      const r = spawnSync('sh', ['-c', 'cat "$1" | "$2" "$3" receive --target "$4" --create --spool-dir "$5" -q', 'sh', i.stream, process.execPath, CLI, target, small!.dir], { encoding: 'utf8' });
      expect(r.status).toBe(1);
      expectOneErrorLine(r.stderr, 'ENOSPC');
      expect(r.stderr).toContain(`cannot write the stream's spool file in ${small!.dir} (`);
      expect(r.stderr).toContain('point --spool-dir (or TMPDIR) at a filesystem with room; the target was not touched');
      expect(existsSync(target)).toBe(false);
      expect(small!.files()).toEqual(['filler']);
    });

    // Without the tmpfs, gateMount above has warned (or failed); without the reference tools, itOracle does.
    (small ? itOracle : test.skip)('with room, dump -o replaces FILE with thin_dump\'s bytes and keeps its permissions', () => {
      small!.reset();
      const out = join(small!.dir, 'old.out');
      writeFileSync(out, 'the previous backup\n', { mode: 0o640 });
      const d = runCli(['dump', '--skip-mappings', '-o', out, i.big]);
      expect([d.status, d.stderr]).toEqual([0, '']);
      expect(readFileSync(out, 'utf8')).toBe(runOracle('thin_dump', ['--skip-mappings', i.big]).stdout);
      expect(statSync(out).mode & 0o777).toBe(0o640);
      expect(small!.files()).toEqual(['old.out']);
    });

    testAsRoot('dump -o over a file with set-user-ID and set-group-ID bits and another owner keeps all of them (outside hunt T: the chown after the chmod cleared them)', () => {
      const dir = mkdtempSync(join(tmpdir(), 'dmthin-suid-'));
      try {
        const out = join(dir, 'old.out');
        writeFileSync(out, 'the previous backup\n');
        chownSync(out, 65534, 65534);
        chmodSync(out, 0o6750);
        const d = runCli(['dump', '--skip-mappings', '-o', out, i.big]);
        expect([d.status, d.stderr]).toEqual([0, '']);
        const st = statSync(out);
        expect([st.mode & 0o7777, st.uid, st.gid]).toEqual([0o6750, 65534, 65534]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});
