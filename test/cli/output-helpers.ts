/**
 * Shared by the output tests: scratch inputs for every command that writes
 * output on the host, a small tmpfs that is full, and child processes whose
 * stdout is a given file descriptor or a pipe closed before they write.
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI } from './run-cli';
import { fixtureImage, kernelFixtureImage } from '../helpers/fixtures';
import { rootGate } from '../helpers/root';
import { scratch, writeDataFile, type Scratch } from '../stream/helpers';

export const BS = 65536;
export const SIZE = 300 * BS;

export interface Inputs {
  s: Scratch;
  /** Metadata with large outputs (kernel-made, 1.2 MB of dump). */
  big: string;
  /** Metadata + data image for send (metadata-snap-diverged at 64 KiB blocks). */
  meta: string;
  data: string;
  /** A full stream of device 4 and a target for receive. */
  stream: string;
}

export async function makeInputs(): Promise<Inputs> {
  const s = scratch();
  const big = s.path('kernel-held.bin');
  writeFileSync(big, kernelFixtureImage('kernel-held'));
  const meta = s.path('meta.bin');
  const image = fixtureImage('metadata-snap-diverged');
  writeFileSync(meta, image);
  const data = s.path('data.bin');
  await writeDataFile(image, data, BS);
  const stream = s.path('full4.s');
  const r = spawnSync(process.execPath, [CLI, 'send', '--metadata', meta, '--data', data, '--snap', '4', '--size', String(SIZE), '-o', stream, '-q']);
  if (r.status !== 0) throw new Error(`send failed: ${r.stderr}`);
  return { s, big, meta, data, stream };
}

/** Every command that writes to stdout and runs without a live pool: [name, args, fresh target for receive]. */
export function stdoutCommands(i: Inputs): [string, () => string[]][] {
  let n = 0;
  return [
    ['dump', () => ['dump', i.big]],
    ['dump -f human_readable', () => ['dump', '-f', 'human_readable', i.big]],
    ['dump -f json', () => ['dump', '-f', 'json', i.big]],
    ['ls', () => ['ls', i.big]],
    ['ls --json', () => ['ls', '--json', i.big]],
    ['delta', () => ['delta', '--snap1', '1', '--snap2', '2', i.big]],
    ['delta --verbose -f json', () => ['delta', '--verbose', '-f', 'json', '--snap1', '1', '--snap2', '2', i.big]],
    ['rmap', () => ['rmap', '--region', '0..100000000', i.big]],
    // Through the held snapshot (kernel-held holds one): stdout's end is held until its check.
    ['dump -m', () => ['dump', '-m', i.big]],
    ['delta -m', () => ['delta', '-m', '--snap1', '1', '--snap2', '2', i.big]],
    ['rmap -m', () => ['rmap', '-m', '--region', '0..100000000', i.big]],
    ['send', () => ['send', '--metadata', i.meta, '--data', i.data, '--snap', '4', '--size', String(SIZE), '-q']],
    ['receive --json', () => ['receive', '--target', i.s.path(`rt${n++}`), '--create', '-i', i.stream, '--json', '-q']],
    ['--help', () => ['--help']],
    ['dump --help', () => ['dump', '--help']],
    ['--version', () => ['--version']],
  ];
}

/** Commands with -o FILE whose output is large (hundreds of KiB), for partial-write cases. */
export function fileCommands(i: Inputs): [string, (out: string) => string[]][] {
  return [
    ['dump -o', (o) => ['dump', '-o', o, i.big]],
    ['delta -o', (o) => ['delta', '--verbose', '-o', o, '--snap1', '1', '--snap2', '2', i.big]],
    ['rmap -o', (o) => ['rmap', '-o', o, '--region', '0..100000000', i.big]],
    ['send -o', (o) => ['send', '--metadata', i.meta, '--data', i.data, '--snap', '4', '--size', String(SIZE), '-q', '-o', o]],
  ];
}

export interface Run {
  status: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

/** The CLI with stdout on an open file descriptor. */
export function runToFd(args: string[], fd: number): Run {
  const r = spawnSync(process.execPath, [CLI, ...args], { stdio: ['ignore', fd, 'pipe'], encoding: 'utf8', timeout: 120_000 });
  if (r.error) throw r.error;
  return { status: r.status, signal: r.signal, stderr: r.stderr };
}

/** The CLI with stdout redirected into `path` (created/truncated). */
export function runToFile(args: string[], path: string): Run {
  const fd = openSync(path, 'w');
  try {
    return runToFd(args, fd);
  } finally {
    closeSync(fd);
  }
}

/** The CLI writing into a pipe whose reader is closed at once (EPIPE on its first write). */
export function runIntoClosedPipe(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    p.stdout.destroy();
    let stderr = '';
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), 120_000);
    p.on('error', reject);
    p.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stderr });
    });
  });
}

/** `CMD | head -1` in bash: the first line, CMD's exit status and its stderr. */
export function intoHead(args: string[]): { line: string; status: number; stderr: string } {
  const q = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;
  const cmd = `${[process.execPath, CLI, ...args].map(q).join(' ')} 2>"$ERR" | head -1; echo "rc=\${PIPESTATUS[0]}"`;
  const errFile = join(tmpdir(), `dmthin-head-${process.pid}-${Math.random().toString(36).slice(2)}.err`);
  const r = spawnSync('bash', ['-c', cmd], { encoding: 'utf8', env: { ...process.env, ERR: errFile }, timeout: 120_000 });
  const stderr = existsSync(errFile) ? readFileSync(errFile, 'utf8') : '';
  rmSync(errFile, { force: true });
  const lines = r.stdout.split('\n');
  const rc = /^rc=(\d+)$/.exec(lines[1] ?? '');
  return { line: lines[0], status: rc ? Number(rc[1]) : -1, stderr };
}

// ---------------------------------------------------------------- a small full filesystem

export interface SmallFs {
  dir: string;
  /** Fills the filesystem, leaving `free` bytes (rounded to pages) unused. */
  fill(free: number): void;
  /** Removes everything but `keep`. */
  reset(keep?: string[]): void;
  files(): string[];
  unmount(): void;
}

/**
 * A tmpfs of `size` (mount -o size=; 64 KiB) under `parent`, or the reason it cannot be mounted (not root,
 * no mount namespace).
 */
export function mountSmallTmpfs(parent: string, size = '64k'): SmallFs | string {
  const dir = join(parent, 'smallfs');
  mkdirSync(dir, { recursive: true });
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return `mount -t tmpfs failed: ${(r.error?.message ?? r.stderr).trim()}`;
  const filler = join(dir, 'filler');
  return {
    dir,
    fill(free: number) {
      const fd = openSync(filler, 'w');
      try {
        const page = Buffer.alloc(4096, 0x55);
        let size = 0;
        for (;;) {
          try {
            const n = writeSync(fd, page);
            size += n;
            if (n < page.length) break;
          } catch {
            break;
          }
        }
        ftruncateSync(fd, Math.max(0, size - free));
      } finally {
        closeSync(fd);
      }
    },
    reset(keep: string[] = []) {
      for (const f of readdirSync(dir)) if (!keep.includes(f)) rmSync(join(dir, f), { force: true, recursive: true });
    },
    files: () => readdirSync(dir).sort(),
    unmount() {
      spawnSync('umount', [dir]);
    },
  };
}

/** The tmpfs, or null after a loud skip warning (a failure under DMTHIN_REQUIRE_ROOT=1): mounting needs root. */
export function gateMount(fs: SmallFs | string, name: string): SmallFs | null {
  if (typeof fs !== 'string') return fs;
  rootGate(name, fs);
  return null;
}
