/**
 * Offline send/receive and backup/restore through the CLI on random
 * snapshot pools (scripts/fixtures/random-pool.mjs --snapshots [--held]
 * --bounded: every device fits a sparse file):
 * shared subtrees, copy-on-write breaks, deleted devices, a held metadata
 * snapshot the pool diverged from. Every data block of the pool's data image
 * holds a pattern naming it; what each thin device must read as comes from
 * thin_dump's XML (the reference), not from dmthin's reader.
 *
 * Per seed and per metadata view (live, and the held snapshot through -m):
 * - a chain of devices chosen by the seed, sent full then incrementally
 *   against the previous one (a stream file, or piped from send into
 *   receive), received into one file that held junk: after each step the
 *   file reads as that device;
 * - backups of a few devices into one repository (its codec and whether it
 *   is encrypted chosen by the seed; incremental, now and then --full), `backups verify --data`, then restores in another order
 *   onto one file (the first over junk or --create): after each, the file
 *   reads as that device.
 * Now and then a receive, a backup or a restore is first killed with SIGKILL
 * at a moment chosen by the seed, then run again: the rerun must exit 0 and
 * leave what an uninterrupted run leaves.
 * A step reads the blocks either device maps, the junk blocks and a few
 * others (not the whole sparse file).
 *
 * DMTHIN_RANDOM_CHAINS=N runs N seeds of each kind (default 1: about a
 * minute of CI; more seeds before a change to send, receive or the repository).
 */
import { spawn } from 'node:child_process';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, runCli } from '../cli/run-cli';
import { describeOracle, type TempFile } from '../helpers/fixtures';
import { makeRandomPool, referenceMappings, type RandomPool, type RandomPoolKind } from '../helpers/random-pool';
import { chooser, type Chooser } from '../helpers/seeded';
import { isPattern, junkBytes, patternBlock } from '../stream/helpers';

const BS = 65536; // the snapshot pools' data block size (128 sectors)
const count = Number(process.env.DMTHIN_RANDOM_CHAINS ?? 1);
type Maps = Map<number, Map<number, number>>;

/** How long the last whole run of each command took (ms): where a kill may land. */
const lasted = new Map<string, number>();

function run(args: string[]): string {
  const t0 = performance.now();
  const r = runCli(args, { timeoutMs: 120_000 });
  lasted.set(args[0], performance.now() - t0);
  if (r.status !== 0) throw new Error(`dmthin ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** send | receive, both processes' exit statuses checked. */
function piped(send: string[], receive: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const a = spawn(process.execPath, [CLI, ...send], { stdio: ['ignore', 'pipe', 'pipe'] });
    const b = spawn(process.execPath, [CLI, ...receive], { stdio: [a.stdout, 'ignore', 'pipe'] });
    // receive holds its own copy of the pipe; ours, never read, would keep
    // `a` from closing.
    a.stdout.destroy();
    const err: string[] = [];
    a.stderr.on('data', (c: Buffer) => err.push(c.toString()));
    b.stderr.on('data', (c: Buffer) => err.push(c.toString()));
    let left = 2;
    const codes: (number | null)[] = [];
    const done = (code: number | null): void => {
      codes.push(code);
      if (--left === 0) (codes.every((c) => c === 0) ? resolve() : reject(new Error(`send | receive: exit ${codes.join(', ')}: ${err.join('')}`)));
    };
    a.on('close', done);
    b.on('close', done);
  });
}

/**
 * Runs the command and kills it with SIGKILL at a moment chosen by the seed
 * within the last whole run of that command's time (150 ms before there is
 * one), so the kill lands anywhere from start-up to after the last write. A
 * run that ends by itself must have exited 0.
 */
function killedAt(args: string[], c: Chooser): Promise<'killed' | 'finished'> {
  const ms = c.int(0, Math.max(150, Math.round(lasted.get(args[0]) ?? 0)));
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    const err: string[] = [];
    p.stderr.on('data', (c: Buffer) => err.push(c.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), ms);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      if (signal === 'SIGKILL') resolve('killed');
      else if (code === 0) resolve('finished');
      else reject(new Error(`dmthin ${args.join(' ')}: exit ${code ?? signal}: ${err.join('')}`));
    });
  });
}

/** A sparse data image: each data block any view maps holds its pattern. */
function writeData(path: string, nrDataBlocks: number, views: Maps[]): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, nrDataBlocks * BS);
    const used = new Set<number>();
    for (const maps of views) for (const m of maps.values()) for (const d of m.values()) used.add(d);
    for (const d of used) writeSync(fd, patternBlock(d, BS), 0, BS, d * BS);
  } finally {
    closeSync(fd);
  }
}

/** `count` junk blocks at random places of a file of `blocks` blocks; returns them. */
function junk(path: string, blocks: number, c: Chooser, count = 12): number[] {
  const fd = openSync(path, 'w');
  const at: number[] = [];
  try {
    ftruncateSync(fd, blocks * BS);
    for (let i = 0; i < count; i++) {
      const b = c.int(0, blocks - 1);
      writeSync(fd, junkBytes(BS, b + 1), 0, BS, b * BS);
      at.push(b);
    }
  } finally {
    closeSync(fd);
  }
  return at;
}

/**
 * The file reads as `want` (virtual -> data block; absent: zeros) at every
 * block of `also`, of `want` and of a few random places, and has the size.
 */
function expectHolds(path: string, blocks: number, want: Map<number, number>, also: Iterable<number>, c: Chooser, what: string): void {
  expect({ what, size: statSync(path).size }).toEqual({ what, size: blocks * BS });
  const check = new Set<number>([...want.keys(), ...also]);
  for (let i = 0; i < 8; i++) check.add(c.int(0, blocks - 1));
  const zero = Buffer.alloc(BS);
  const buf = Buffer.alloc(BS);
  expect(isPattern(patternBlock(7, BS), 7) && !isPattern(patternBlock(7, BS), 8)).toBe(true);
  const fd = openSync(path, 'r');
  try {
    for (const v of check) {
      if (v >= blocks) continue;
      expect(readSync(fd, buf, 0, BS, v * BS)).toBe(BS);
      const d = want.get(v);
      if (d === undefined ? !buf.equals(zero) : !isPattern(buf, d)) {
        throw new Error(`${what}: virtual block ${v} should read as ${d === undefined ? 'zeros' : `data block ${d}`}`);
      }
    }
  } finally {
    closeSync(fd);
  }
}

function cases(kind: RandomPoolKind, seeds: number[]): void {
  describe.each(seeds.map((s) => [s]))(`seed %i (${kind})`, (seed) => {
    let img: TempFile;
    let pool: RandomPool;
    let dir: string;
    const views: { name: string; maps: Maps; flags: string[] }[] = [];
    beforeAll(() => {
      ({ img, pool } = makeRandomPool(seed, kind, { bounded: true }));
      dir = mkdtempSync(join(tmpdir(), 'dmthin-chains-'));
      views.push({ name: 'live', maps: referenceMappings(img.path), flags: [] });
      if (kind === 'held') views.push({ name: 'held', maps: referenceMappings(img.path, true), flags: ['-m'] });
      writeData(join(dir, 'data.img'), pool.nrDataBlocks, views.map((v) => v.maps));
    });
    afterAll(() => {
      img?.cleanup();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    /** The view's devices, and the size that fits them all. */
    const eligible = (maps: Maps): { devs: number[]; blocks: number } => {
      const devs = [...maps.keys()].sort((a, b) => a - b);
      let top = 1;
      for (const id of devs) for (const v of maps.get(id)!.keys()) top = Math.max(top, v + 1);
      return { devs, blocks: top };
    };

    test('send, then incrementals, received into one file: each step holds its device', async () => {
      const c = chooser(seed * 7 + (kind === 'held' ? 1 : 0));
      for (const { name, maps, flags } of views) {
        const { devs, blocks: top } = eligible(maps);
        expect(devs.length).toBeGreaterThan(0);
        const blocks = top + c.pick([0, 1, 7]);
        const chain = [c.pick(devs)];
        for (let i = c.int(2, 5); i > 0; i--) {
          const next = c.pick(devs);
          if (next !== chain[chain.length - 1]) chain.push(next);
        }
        const target = join(dir, `recv-${name}.img`);
        const junked = junk(target, blocks, c);
        const common = ['--metadata', img.path, '--data', join(dir, 'data.img'), '--size', String(blocks * BS), '-q', ...flags];
        let prev: number | undefined;
        for (const [step, dev] of chain.entries()) {
          const send = ['send', ...common, '--snap', String(dev), ...(prev === undefined ? [] : ['--base', String(prev)])];
          if (c.next() < 0.3) {
            await piped(send, ['receive', '--target', target, '-i', '-', '-q']);
          } else {
            const stream = join(dir, 'step.stream');
            run([...send, '-o', stream]);
            const receive = ['receive', '--target', target, '-i', stream, '-q'];
            // Now and then a receive killed first: the rerun must finish the job.
            if (c.next() < 0.3) await killedAt(receive, c);
            run(receive);
          }
          const before = prev === undefined ? junked : maps.get(prev)!.keys();
          expectHolds(target, blocks, maps.get(dev)!, before, c, `${name} chain ${chain.join(',')} step ${step} (device ${dev})`);
          prev = dev;
        }
      }
    });

    test('backups of several devices, restored in another order onto one file', async () => {
      const c = chooser(seed * 7 + 3 + (kind === 'held' ? 1 : 0));
      for (const { name, maps, flags } of views) {
        const { devs, blocks } = eligible(maps);
        expect(devs.length).toBeGreaterThan(0);
        const repo = join(dir, `repo-${name}`);
        // A codec and, now and then, encryption chosen by the seed.
        const key = c.next() < 0.5 ? ['--key-file', join(dir, `key-${name}`)] : [];
        run(['backups', 'init', '--repo', repo, '--compression', c.pick(['none', 'deflate:1', 'brotli:1']), ...key]);
        const common = ['--metadata', img.path, '--data', join(dir, 'data.img'), '--size', String(blocks * BS), '--repo', repo, ...key, '--volume', 'v', '--json', '-q', ...flags];
        const backups: { dev: number; id: string }[] = [];
        for (let i = c.int(2, 4); i > 0; i--) {
          const dev = c.pick(devs);
          const backup = ['backup', ...common, '--snap', String(dev), ...(c.next() < 0.2 ? ['--full'] : [])];
          if (c.next() < 0.25) await killedAt(backup, c);
          const out = JSON.parse(run(backup)) as { id: string };
          backups.push({ dev, id: out.id });
        }
        run(['backups', 'verify', '--repo', repo, ...key, '--data', '-q']);
        const order = [...backups].sort(() => c.next() - 0.5);
        const target = join(dir, `restore-${name}.img`);
        let before: Iterable<number> = [];
        for (const [step, { dev, id }] of order.entries()) {
          const args = ['restore', '--repo', repo, ...key, '--backup', id, '--target', target, '-q'];
          if (step === 0 && c.next() < 0.5) before = junk(target, blocks, c);
          else if (step === 0) args.push('--create');
          if (c.next() < 0.25) await killedAt(args, c);
          run(args);
          expectHolds(target, blocks, maps.get(dev)!, before, c, `${name} restore order ${order.map((b) => b.dev).join(',')} step ${step} (device ${dev})`);
          before = maps.get(dev)!.keys();
        }
      }
    });
  });
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i + 1);

describeOracle('random pools: offline send/receive and backup/restore hold what thin_dump says each device maps', () => {
  cases('snap', range(count));
  cases('held', range(count));
});
