/**
 * dmthin-vm (vm/dmthin-vm.mjs) as a user runs it, from the host: a real
 * guest boot runs a command in the caller's folder (exit status, files
 * written there, output streamed while the command runs), and the one-line
 * errors for missing prerequisites and bad arguments.
 *
 * The boots need qemu and the guest kernel: without them those tests are
 * skipped loudly, or fail under DMTHIN_REQUIRE_VM=1 (as the root-VM suite).
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ROOT = join(__dirname, '..', '..');
const TOOL = join(ROOT, 'vm', 'dmthin-vm.mjs');
const VM_FAILURE = 125;

interface ToolRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

function runTool(args: string[], opts: { cwd?: string; env?: Record<string, string | undefined> } = {}): ToolRun {
  const r = spawnSync(process.execPath, [TOOL, ...args], {
    cwd: opts.cwd ?? ROOT,
    env: { ...process.env, ...opts.env },
    encoding: 'utf8',
    timeout: 600_000,
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

// ------------------------------------------------------------------ the gate

/** Why the guest cannot boot here ('' when it can): `dmthin-vm --prepare` builds the kernel cache on first use. */
const vmUnavailable: string = (() => {
  const r = runTool(['--prepare', '--quiet']);
  return r.status === 0 ? '' : r.stderr.trim() || `dmthin-vm --prepare exited with ${r.status}`;
})();

function describeVmTool(name: string, fn: () => void): void {
  if (!vmUnavailable) {
    describe(name, fn);
  } else if (process.env.DMTHIN_REQUIRE_VM === '1') {
    describe(name, () => {
      it('requires the VM (DMTHIN_REQUIRE_VM=1)', () => {
        throw new Error(`VM required but unavailable: ${vmUnavailable}`);
      });
    });
  } else {
    process.stderr.write(`\n*** WARNING: SKIPPING "${name}": ${vmUnavailable}. Set DMTHIN_REQUIRE_VM=1 to make this a failure. ***\n\n`);
    describe.skip(`${name} [SKIPPED: VM UNAVAILABLE - ${vmUnavailable}]`, fn);
  }
}

// ------------------------------------------------------------- real boots

describeVmTool('dmthin-vm boots a guest', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'dmthin-vm-tool-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  // A boot takes ~7-20 s under TCG; the tests get far more, so that a loaded
  // host makes them slow, not failed (a stuck boot is started again once).
  // The tool's own --timeout is shorter than jest's, so a guest that hangs
  // fails the test with the tool's stderr (what it saw) instead of jest's timeout.
  const BOOT_TEST_TIMEOUT = 600_000;

  test('runs the command as root in the caller\'s folder: exit status back, files written there on the host, output streamed live', async () => {
    const script = 'echo hi > out.txt; echo "uid=$(id -u) cwd=$(pwd)"; echo first; sleep 4; echo last; exit 3';
    const child = spawn(process.execPath, [TOOL, '--timeout', '300', '--', 'sh', '-c', script], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let firstAt = 0;
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      if (!firstAt && stdout.includes('first\n')) firstAt = Date.now();
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const status = await new Promise<number | null>((res) => child.on('close', (code) => res(code)));
    const endedAt = Date.now();

    expect({ status, stderr }).toMatchObject({ status: 3 });
    expect(readFileSync(join(dir, 'out.txt'), 'utf8')).toBe('hi\n');
    expect(stdout).toBe(`uid=0 cwd=${dir}\nfirst\nlast\n`);
    // "first" reached us while the command still slept: streamed, not collected at the end.
    expect(firstAt).toBeGreaterThan(0);
    expect(endedAt - firstAt).toBeGreaterThanOrEqual(2500);
    expect(stderr).not.toMatch(/^dmthin-vm:/m); // no error line: the VM did its job
  }, BOOT_TEST_TIMEOUT);

  /**
   * A stand-in qemu: its first `hangs` calls hang without a word (a stuck
   * boot); later ones answer like init.sh (ready line, output, exit line with
   * the run id from -append) and then hang too (a guest that does not power off).
   */
  function stuckQemu(hangs: number): string {
    const counter = join(dir, 'qemu-calls');
    const path = join(dir, 'qemu-stand-in');
    writeFileSync(
      path,
      [
        '#!/bin/sh',
        `n=$(cat ${counter} 2>/dev/null || echo 0); echo $((n + 1)) > ${counter}`,
        `[ "$n" -lt ${hangs} ] && exec sleep 1000`,
        'id=$(printf "%s\\n" "$@" | sed -n "s/.*dmthin_vm\\.id=\\([0-9a-f]*\\).*/\\1/p")',
        'echo "kernel chatter"; echo "DMTHIN-VM-READY:$id"; echo ran; echo "DMTHIN-VM-EXIT:$id:4"',
        'exec sleep 1000',
        '',
      ].join('\n'),
    );
    chmodSync(path, 0o755);
    return path;
  }

  test('a boot that never reaches the command is killed and started again once; a guest that does not power off is stopped, its status kept', () => {
    const env = { DMTHIN_VM_QEMU: stuckQemu(1), DMTHIN_VM_BOOT_TIMEOUT: '2', DMTHIN_VM_POWEROFF_GRACE: '1' };
    const r = runTool(['--', 'true'], { cwd: dir, env });
    expect(r.stdout).toBe('ran\n');
    expect(r.status).toBe(4);
    expect(r.stderr.split('\n').filter((l) => !l.startsWith('[dmthin-vm] booting kernel'))).toEqual([
      '[dmthin-vm] the guest did not finish booting in 2 s (last console line: (no console output)); killed it, booting again',
      "[dmthin-vm] the guest did not power off within 1 s of the command's end; stopped it (the command's exit status is kept)",
      '',
    ]);
    expect(r.stderr).toMatch(/^\[dmthin-vm\] booting kernel .*\(attempt 2 of 2\)$/m);
    expect(readFileSync(join(dir, 'qemu-calls'), 'utf8')).toBe('2\n');
  });

  test('a boot stuck twice: exit 125, one line naming the boot timeout', () => {
    const r = runTool(['--quiet', '--', 'true'], { cwd: dir, env: { DMTHIN_VM_QEMU: stuckQemu(2), DMTHIN_VM_BOOT_TIMEOUT: '1' } });
    expect(r).toEqual({
      status: VM_FAILURE,
      stdout: '',
      stderr: 'dmthin-vm: the guest did not finish booting in 1 s, 2 times (DMTHIN_VM_BOOT_TIMEOUT=<seconds> gives it longer) [EIO]\n',
    });
    expect(readFileSync(join(dir, 'qemu-calls'), 'utf8')).toBe('2\n');
  });

  test('a folder outside /tmp is writable too (subfolders included); the rest of the host, /tmp included, is not changed', () => {
    // A folder outside /tmp takes the other path in the guest's init: there
    // /tmp is the guest's own tmpfs. The repository's .vm-cache/ (git-ignored)
    // when the clone is outside /tmp, else /var/tmp.
    const base = ROOT === '/tmp' || ROOT.startsWith('/tmp/') ? '/var/tmp' : join(ROOT, '.vm-cache');
    mkdirSync(base, { recursive: true });
    const work = mkdtempSync(join(base, 'tool-test-'));
    const marker = join(dir, 'guest-wrote-here');
    try {
      const r = runTool(['--quiet', '--timeout', '300', '--', 'sh', '-c', `mkdir -p sub && echo x > sub/f && mkdir -p ${dir} && echo y > ${marker} && echo ok; touch ${join(ROOT, 'package.json')} 2>/dev/null || echo ro`], { cwd: work });
      expect(r).toEqual({ status: 0, stdout: 'ok\nro\n', stderr: '' });
      expect(readFileSync(join(work, 'sub', 'f'), 'utf8')).toBe('x\n');
      expect(existsSync(marker)).toBe(false);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }, BOOT_TEST_TIMEOUT);

  test('a kernel package that does not exist: one line naming it and what to do', () => {
    const cache = mkdtempSync(join(tmpdir(), 'dmthin-vm-cache-'));
    try {
      const r = runTool(['--kernel', '0.0.0-no-such-kernel-amd64', '--', 'true'], { cwd: dir, env: { DMTHIN_VM_CACHE: cache } });
      expect(r.status).toBe(VM_FAILURE);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(
        /^(\[dmthin-vm\] .*\n)*dmthin-vm: cannot boot the VM: the kernel package linux-image-0\.0\.0-no-such-kernel-amd64 could not be downloaded \(apt-get download: [^\n]+\); check the name \(apt-cache search [^\n]+\), run apt-get update, or pick another kernel with --kernel VER \[ENOENT\]\n$/,
      );
    } finally {
      rmSync(cache, { recursive: true, force: true });
    }
  });
});

// ------------------------------------------------ errors, no boot needed

describe('dmthin-vm errors: one line on stderr, exit 125', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'dmthin-vm-errors-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** A tool folder holding every program the VM needs (stand-ins) except `missing`. */
  function toolPath(missing: string[]): string {
    const d = mkdtempSync(join(dir, 'tools-'));
    for (const name of ['qemu-system-x86_64', 'cpio', 'gzip', 'modprobe', 'depmod', 'dpkg-deb', 'apt-get', 'apt-cache']) {
      if (missing.includes(name)) continue;
      // Only presence is checked before the first missing one is reported.
      writeFileSync(join(d, name), '#!/bin/sh\nexit 99\n');
      chmodSync(join(d, name), 0o755);
    }
    if (!missing.includes('busybox')) {
      const real = ['/bin/busybox', '/usr/bin/busybox'].find((p) => existsSync(p));
      if (real) symlinkSync(real, join(d, 'busybox'));
    }
    return d;
  }

  const cases: [string, string[], string][] = [
    ['qemu', ['qemu-system-x86_64'], 'qemu-system-x86_64 not found; install it with: apt-get install qemu-system-x86'],
    ['busybox-static', ['busybox'], 'no statically linked busybox; install it with: apt-get install busybox-static'],
    ['cpio', ['cpio'], 'cpio not found; install it with: apt-get install cpio'],
    ['kmod', ['modprobe', 'depmod'], 'modprobe/depmod not found; install it with: apt-get install kmod'],
  ];
  const haveStaticBusybox = !vmUnavailable || ['/bin/busybox', '/usr/bin/busybox'].some((p) => existsSync(p));

  test.each(cases)('missing %s', (_what, missing, expected) => {
    const r = runTool(['--', 'true'], { cwd: dir, env: { DMTHIN_VM_TOOL_PATH: toolPath(missing), DMTHIN_VM_CACHE: join(dir, 'cache'), DMTHIN_VM_QEMU: undefined, DMTHIN_VM_BUSYBOX: undefined } });
    expect(r.status).toBe(VM_FAILURE);
    expect(r.stdout).toBe('');
    const line = `dmthin-vm: cannot boot the VM: ${expected} [ENOENT]\n`;
    if (haveStaticBusybox || missing.includes('busybox')) expect(r.stderr).toBe(line);
    else expect(r.stderr).toMatch(new RegExp(`^dmthin-vm: cannot boot the VM: .*${expected.split(';')[0]}.*\\[ENOENT\\]\\n$`));
    expect(existsSync(join(dir, 'cache'))).toBe(false); // nothing was downloaded or built
  });

  test('everything missing: one line, one apt-get command for all of it', () => {
    const r = runTool(['--', 'true'], { cwd: dir, env: { DMTHIN_VM_TOOL_PATH: toolPath(['qemu-system-x86_64', 'busybox', 'cpio', 'modprobe', 'depmod']), DMTHIN_VM_QEMU: undefined, DMTHIN_VM_BUSYBOX: undefined } });
    expect(r).toEqual({
      status: VM_FAILURE,
      stdout: '',
      stderr:
        'dmthin-vm: cannot boot the VM: qemu-system-x86_64 not found; no statically linked busybox; cpio not found; modprobe/depmod not found; ' +
        'install them with: apt-get install qemu-system-x86 busybox-static cpio kmod [ENOENT]\n',
    });
  });

  test('DMTHIN_VM_QEMU=/nonexistent', () => {
    const r = runTool(['--', 'true'], { cwd: dir, env: { DMTHIN_VM_QEMU: '/nonexistent' } });
    expect(r).toEqual({
      status: VM_FAILURE,
      stdout: '',
      stderr: 'dmthin-vm: cannot boot the VM: qemu not found (DMTHIN_VM_QEMU=/nonexistent); install it with: apt-get install qemu-system-x86 [ENOENT]\n',
    });
  });

  test('a busybox that is not statically linked', () => {
    const r = runTool(['--', 'true'], { cwd: dir, env: { DMTHIN_VM_BUSYBOX: process.execPath } });
    expect(r.status).toBe(VM_FAILURE);
    expect(r.stderr).toMatch(new RegExp(`^dmthin-vm: cannot boot the VM: (.*; )?DMTHIN_VM_BUSYBOX=${process.execPath.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} is not a statically linked busybox; .*apt-get install [^\\n]*busybox-static[^\\n]* \\[ENOENT\\]\\n$`));
  });

  test.each([
    [[], 'no command given (see dmthin-vm --help)'],
    [['--mem', '0', '--', 'true'], "--mem must be a positive integer, got '0' (see dmthin-vm --help)"],
    [['--cpus'], '--cpus needs a value (see dmthin-vm --help)'],
    [['--frobnicate', '--', 'true'], 'unknown option --frobnicate (see dmthin-vm --help)'],
    [['--env', 'NOEQUALS', '--', 'true'], "--env wants NAME=VALUE, got 'NOEQUALS' (see dmthin-vm --help)"],
  ])('usage error %j', (args, message) => {
    expect(runTool(args, { cwd: dir })).toEqual({ status: VM_FAILURE, stdout: '', stderr: `dmthin-vm: ${message} [EINVAL]\n` });
  });

  test('run from / (it would make all of the host writable): refused before anything boots', () => {
    const r = runTool(['--', 'true'], { cwd: '/', env: { DMTHIN_VM_QEMU: '/nonexistent' } });
    expect(r).toEqual({
      status: VM_FAILURE,
      stdout: '',
      stderr: 'dmthin-vm: the working folder is /, which cannot be shared writable with the guest: run from a project folder [EINVAL]\n',
    });
  });

  test("the README's synopsis is --help's usage", () => {
    const usage = runTool(['--help']).stdout.split('\n\n')[0].split('\n').map((l) => l.replace(/^(Usage: | {7})/, ''));
    expect(usage).toEqual(['dmthin-vm [options] [--] command [args...]', 'dmthin-vm --prepare [--kernel VER]']);
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    expect(readme).toContain('```\n' + usage.join('\n') + '\n```\n');
  });

  test('--help names every option the parser takes', () => {
    const r = runTool(['--help']);
    expect(r.status).toBe(0);
    for (const opt of ['--kernel VER', '--mem MiB', '--cpus N', '--timeout SEC', '--env K=V', '--prepare', '--keep', '--quiet', '--version', '--help']) {
      expect(r.stdout).toContain(opt);
    }
  });
});
