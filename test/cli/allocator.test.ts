/**
 * The CLI's malloc thresholds (native/allocator.cc, set through
 * native/binding.ts when the addon loads): in a CLI process, chunks below
 * 1 MiB come from the main heap instead of an mmap each; a library that
 * loads the addon, and a CLI run that never loads it (--help), keep glibc's
 * defaults. Seen from outside the allocator: how much the `[heap]` mapping
 * of /proc/self/maps grows when 48 chunks of 960 KiB are allocated (about
 * 45 MiB when they come from the heap, nothing when each is an mmap).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI } from './run-cli';

const ROOT = join(__dirname, '..', '..');
const POOL = join(ROOT, 'examples', 'pool.bin');
const BINDING = join(ROOT, 'dist', 'native', 'binding.js');
const glibc = process.platform === 'linux' && Boolean((process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime);

let dir: string;
let probe: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'dmthin-allocator-'));
  // Preloaded: when the process ends (after the command, before it exits), the
  // heap's growth for 48 x 960 KiB, and the room the heap had to grow: brk
  // extends [heap] only up to the next mapping, and when one lies close above
  // it (ASLR placed a thread stack or V8's code there: ~1 run in 40 here)
  // glibc's main arena takes mmap'd memory instead, so that run says nothing.
  probe = join(dir, 'heap-probe.js');
  writeFileSync(
    probe,
    `const { readFileSync, writeSync } = require('node:fs');
const heap = () => {
  const ranges = readFileSync('/proc/self/maps', 'utf8').split('\\n').filter(Boolean).map((l) => ({ r: l.split(' ')[0].split('-').map((h) => parseInt(h, 16)), heap: l.endsWith('[heap]') }));
  const i = ranges.findIndex((x) => x.heap);
  if (i < 0) return { size: 0, room: 0 };
  const next = ranges[i + 1];
  return { size: ranges[i].r[1] - ranges[i].r[0], room: next ? next.r[0] - ranges[i].r[1] : Infinity };
};
process.on('exit', () => {
  const before = heap();
  const keep = [];
  for (let i = 0; i < 48; i++) keep.push(Buffer.allocUnsafeSlow(960 << 10));
  writeSync(2, 'heap-growth ' + (heap().size - before.size) + ' room ' + before.room + '\\n');
});
`,
  );
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * The heap's growth in MiB that the probe saw, and the run's status. A run
 * whose heap had no room for the 45 MiB is run again (at most 8 runs).
 */
function growth(args: string[]): { status: number | null; mib: number } {
  for (let run = 0; run < 8; run++) {
    const r = spawnSync(process.execPath, ['-r', probe, ...args], { encoding: 'utf8', timeout: 30_000, killSignal: 'SIGKILL' });
    const m = /heap-growth (\d+) room (\d+|Infinity)/.exec(r.stderr);
    if (!m) throw new Error(`no probe line (status ${r.status}): ${r.stderr}`);
    if (Number(m[2]) >= 64 << 20) return { status: r.status, mib: Number(m[1]) / 1048576 };
  }
  throw new Error('in 8 runs the heap never had 64 MiB of room above it: nothing to measure');
}

const onGlibc = glibc ? test : test.skip;
if (!glibc) console.warn('SKIPPED test/cli/allocator.test.ts: malloc is not glibc\'s here (the thresholds are glibc mallopt settings)');

onGlibc('a command that loads the addon takes sub-MiB chunks from the heap', () => {
  for (const args of [['ls', POOL], ['dump', POOL]]) {
    const g = growth([CLI, ...args]);
    expect(g.status).toBe(0);
    expect(g.mib).toBeGreaterThan(40);
  }
});

onGlibc('a run that never loads the addon (--help) and a library that loads it keep glibc\'s defaults', () => {
  const help = growth([CLI, '--help']);
  expect(help.status).toBe(0);
  expect(help.mib).toBeLessThan(8);
  const lib = growth(['-e', `require(${JSON.stringify(BINDING)}).native().crc32c(Buffer.from('x'), 0, true)`]);
  expect(lib.status).toBe(0);
  expect(lib.mib).toBeLessThan(8);
});

test('tuneAllocator checks its arguments and reports whether glibc took them', () => {
  const code = `
    const a = require(${JSON.stringify(BINDING)}).native();
    const err = (f) => { try { f(); return 'none'; } catch (e) { return e.constructor.name; } };
    process.stdout.write(JSON.stringify({
      noArgs: err(() => a.tuneAllocator()),
      tooBig: err(() => a.tuneAllocator(64 << 20, 1 << 20)),
      negative: err(() => a.tuneAllocator(1 << 20, -1)),
      ok: a.tuneAllocator(1 << 20, 8 << 20),
    }));
  `;
  const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8', timeout: 30_000 });
  expect(r.status).toBe(0);
  expect(JSON.parse(r.stdout)).toEqual({ noArgs: 'TypeError', tooBig: 'RangeError', negative: 'RangeError', ok: glibc });
});

test('alignedBuffer of 2 MiB or more (a send batch) starts at a huge-page boundary and asks for huge pages on all of it (MADV_HUGEPAGE: an 8 MiB buffer took 2,048 faults of 4 KiB); smaller ones as before; zero and of their length', () => {
  // In a process of its own: the mappings marked for huge pages ("hg" in smaps' VmFlags) and their sizes, before and after.
  const r = spawnSync(
    process.execPath,
    [
      '-e',
      `const { alignedBuffer } = require(${JSON.stringify(join(ROOT, 'build', 'Release', 'dmthin.node'))});
       const { readFileSync } = require('node:fs');
       const marked = () => {
         const out = [];
         let size = 0;
         for (const l of readFileSync('/proc/self/smaps', 'utf8').split('\\n')) {
           if (/^Size:/.test(l)) size = Number(l.split(/\\s+/)[1]);
           if (/^VmFlags:/.test(l) && / hg\\b/.test(l)) out.push(size);
         }
         return out.sort((a, b) => a - b);
       };
       const before = marked();
       const big = alignedBuffer(8 << 20);
       const small = alignedBuffer(1 << 20);
       for (let i = 0; i < big.length; i += 4096) big[i] = 1;
       const after = marked();
       console.log(JSON.stringify({ before, after, lengths: [big.length, small.length], zero: small.every((b) => b === 0)}));`,
    ],
    { encoding: 'utf8', timeout: 60_000 },
  );
  expect(r.stderr).toBe('');
  const { before, after, lengths, zero } = JSON.parse(r.stdout) as { before: number[]; after: number[]; lengths: number[]; zero: boolean };
  expect(lengths).toEqual([8 << 20, 1 << 20]);
  expect(zero).toBe(true);
  // A kernel without transparent huge pages refuses the advice: nothing is marked, and the buffer is as before.
  const thp = existsSync('/sys/kernel/mm/transparent_hugepage/enabled');
  const count = (sizes: number[], kb: number) => sizes.filter((s) => s === kb).length;
  // One more marked mapping, of exactly the buffer's 8 MiB (8,192 kB): the whole buffer, at a huge-page boundary.
  expect([after.length - before.length, count(after, 8 << 10) - count(before, 8 << 10)]).toEqual(thp ? [1, 1] : [0, 0]);
});

/**
 * V8's minor GC task (native/allocator.cc's minorGcTask): on, a young
 * generation 88% full is collected at the next turn of the event loop; off,
 * not until it is full. Seen from outside V8: 'gc' performance entries of
 * the minor kind, in a process of its own.
 */
test('minorGcTask(false): a young generation filled to 88% is not collected when the event loop turns (it is with the task on); a non-boolean is a TypeError', () => {
  const run = (off: boolean) => {
    const r = spawnSync(
      process.execPath,
      [
        '-e',
        `const { PerformanceObserver, constants } = require('node:perf_hooks');
         const v8 = require('node:v8');
         const a = require(${JSON.stringify(join(ROOT, 'build', 'Release', 'dmthin.node'))});
         let typeError = false;
         try { a.minorGcTask(1); } catch (e) { typeError = e instanceof TypeError; }
         if (${off}) a.minorGcTask(false);
         let minor = 0;
         new PerformanceObserver((l) => { for (const e of l.getEntries()) if (e.detail.kind === constants.NODE_PERFORMANCE_GC_MINOR) minor++; }).observe({ entryTypes: ['gc'] });
         const newSpace = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
         const keep = [];
         for (let s = newSpace(); s.space_used_size < 0.88 * (s.space_used_size + s.space_available_size); s = newSpace()) for (let i = 0; i < 16; i++) keep.push(new Array(126).fill(i));
         const filling = minor;
         setImmediate(() => setImmediate(() => setTimeout(() => process.stdout.write(JSON.stringify({ typeError, filling, afterTurns: minor - filling })), 20)));`,
      ],
      { encoding: 'utf8', timeout: 30_000 },
    );
    expect(r.stderr).toBe('');
    return JSON.parse(r.stdout) as { typeError: boolean; filling: number; afterTurns: number };
  };
  expect(run(false)).toEqual({ typeError: true, filling: 0, afterTurns: 1 });
  expect(run(true)).toEqual({ typeError: true, filling: 0, afterTurns: 0 });
});

/**
 * V8's semi-space growth factor (native/allocator.cc's semiSpaceGrowth),
 * set at run time: with 1 the young generation stays at the 1 MiB a
 * semi-space it starts with while objects that survive collections keep
 * coming (V8 doubles it otherwise, up to 16 MiB), as --max-semi-space-size=1
 * given at start did. In a process of its own, no node options.
 */
test('semiSpaceGrowth(1) set at run time keeps the young generation at its initial size (V8 grows it without); anything but an integer 1..16 is a TypeError', () => {
  const run = (factor: number | undefined, nodeOptions: string[] = []) => {
    const r = spawnSync(
      process.execPath,
      [
        ...nodeOptions,
        '-e',
        `const v8 = require('node:v8');
         const a = require(${JSON.stringify(join(ROOT, 'build', 'Release', 'dmthin.node'))});
         const refused = [0, 17, 1.5, '1', undefined].filter((f) => { try { a.semiSpaceGrowth(f); return false; } catch (e) { return e instanceof TypeError; } }).length;
         ${factor === undefined ? '' : `a.semiSpaceGrowth(${factor});`}
         const size = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size;
         const start = size();
         let keep = [];
         for (let i = 0; i < 3e6; i++) { const o = { i, a: [i] }; if (i % 40 === 0) keep.push(o); if (keep.length > 30000) keep = []; }
         process.stdout.write(JSON.stringify({ refused, start, end: size() }));`,
      ],
      { encoding: 'utf8', timeout: 60_000 },
    );
    expect(r.stderr).toBe('');
    return JSON.parse(r.stdout) as { refused: number; start: number; end: number };
  };
  const capped = run(1);
  expect(capped.refused).toBe(5);
  // What the #! line's --max-semi-space-size=1 gave (both semi-spaces in use, 1 MiB each), and what V8 does unasked (16 MiB each).
  expect(capped).toEqual({ ...run(undefined, ['--max-semi-space-size=1']), refused: 5 });
  expect(capped.end).toBeLessThanOrEqual(2 * capped.start);
  const free = run(undefined);
  expect(free.start).toBe(capped.start);
  expect(free.end).toBeGreaterThanOrEqual(8 * free.start);
});

test('a CLI run turns the minor GC task off and holds the young generation at its size before it compiles anything from its code cache, the AbortController module loaded before either; node options that size the young generation keep their growth; a library that loads the addon does neither', () => {
  // Preloaded: every call of the addon's minorGcTask and semiSpaceGrowth,
  // how many modules had been compiled by then (the code cache is installed
  // after the calls) and whether Node's AbortController module was loaded
  // (process.moduleLoadList).
  const spy = join(dir, 'gc-task-spy.js');
  writeFileSync(
    spy,
    `const calls = [];
const dlopen = process.dlopen;
const note = (call) => ({ ...call, cached: Object.keys(require.cache).filter((k) => /[\\\\/](program|errors|common)\\.js$/.test(k)).length, abort: process.moduleLoadList.includes('NativeModule internal/abort_controller') });
process.dlopen = function (m, file, ...rest) {
  const r = dlopen.call(this, m, file, ...rest);
  if (file.endsWith('dmthin.node') && typeof m.exports.minorGcTask === 'function') {
    const f = m.exports.minorGcTask;
    const g = m.exports.semiSpaceGrowth;
    m.exports.minorGcTask = (on) => { calls.push(note({ on })); return f(on); };
    m.exports.semiSpaceGrowth = (factor) => { calls.push(note({ factor })); return g(factor); };
  }
  return r;
};
process.on('exit', () => require('node:fs').writeSync(2, 'gc-task ' + JSON.stringify(calls) + '\\n'));
`,
  );
  const calls = (args: string[], env: NodeJS.ProcessEnv = {}) => {
    const r = spawnSync(process.execPath, ['-r', spy, ...args], { encoding: 'utf8', timeout: 30_000, env: { ...process.env, ...env } });
    const m = /gc-task (.*)/.exec(r.stderr);
    if (!m) throw new Error(`no spy line (status ${r.status}): ${r.stderr}`);
    return { status: r.status, calls: JSON.parse(m[1]) as unknown[] };
  };
  const both = [
    { on: false, cached: 0, abort: true },
    { factor: 1, cached: 0, abort: true },
  ];
  expect(calls([CLI, 'ls', POOL])).toEqual({ status: 0, calls: both });
  expect(calls([CLI, '--help'])).toEqual({ status: 0, calls: both });
  // The young generation sized by the user: on the command line, in NODE_OPTIONS, with V8's underscores too.
  expect(calls(['--max-semi-space-size=4', CLI, 'ls', POOL])).toEqual({ status: 0, calls: [both[0]] });
  expect(calls([CLI, 'ls', POOL], { NODE_OPTIONS: '--max_semi_space_size=4' })).toEqual({ status: 0, calls: [both[0]] });
  expect(calls(['--semi-space-growth-factor=2', CLI, 'ls', POOL])).toEqual({ status: 0, calls: [both[0]] });
  expect(calls(['-e', `require(${JSON.stringify(BINDING)}).native().crc32c(Buffer.from('x'), 0, true)`])).toEqual({ status: 0, calls: [] });
});
