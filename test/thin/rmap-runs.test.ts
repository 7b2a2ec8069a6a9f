/**
 * rmap's sort against the real std::sort: thin_rmap prints runs in the order
 * libstdc++'s std::sort leaves them (ties included), so the oracle here is a
 * small C++ program compiled with the system's g++, sorting the same keys.
 * Both of rmap's paths are checked: the runs held in memory and the runs
 * spilled to a temporary file and sorted there (forced with a small bound),
 * including keys built to drive std::sort into its heapsort fallback while a
 * segment is still larger than the bound.
 */
import { spawnSync } from 'node:child_process';
import { Writable } from 'node:stream';
import { mkdtempSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SystemCallError } from '../../src/errors';
import { runCli } from '../cli/run-cli';
import { fixtureImage, tempImage } from '../helpers/fixtures';
import { OutputSink } from '../../src/output/sink';
import { rmapText, writeRmapText } from '../../src/thin/rmap';
import { filePartition, RmapRuns } from '../../src/thin/rmap-runs';
import { nativeSort } from '../../src/thin/std-sort';

// Reads "n k0 k1 ..." and prints the input index at each sorted position; "kill n" prints
// keys an adversary chose while std::sort ran (each comparison of two undecided elements
// fixes one of them as small as possible), which exhausts the depth limit.
const PROGRAM = `
#include <algorithm>
#include <cstdio>
#include <vector>
struct Rec { double key; unsigned idx; };
static std::vector<long> val;
static long solid, gas, cand;
static bool adv(unsigned x, unsigned y) {
  if (val[x] == gas && val[y] == gas) val[x == (unsigned long)cand ? x : y] = solid++;
  if (val[x] == gas) cand = x; else if (val[y] == gas) cand = y;
  return val[x] < val[y];
}
int main(int argc, char** argv) {
  if (argc > 2) {
    long n = std::atol(argv[2]);
    val.assign(n, n - 1); gas = n - 1; solid = 0; cand = 0;
    std::vector<unsigned> ix(n);
    for (long i = 0; i < n; i++) ix[i] = i;
    std::sort(ix.begin(), ix.end(), adv);
    for (long i = 0; i < n; i++) std::printf("%ld\\n", val[i]);
    return 0;
  }
  unsigned long n; if (std::scanf("%lu", &n) != 1) return 1;
  std::vector<Rec> v(n);
  for (unsigned long i = 0; i < n; i++) { if (std::scanf("%lf", &v[i].key) != 1) return 1; v[i].idx = i; }
  std::sort(v.begin(), v.end(), [](const Rec& a, const Rec& b) { return a.key < b.key; });
  for (auto& r : v) std::printf("%u\\n", r.idx);
  return 0;
}
`;

let dir: string;
let bin: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'dmthin-stdsort-'));
  writeFileSync(join(dir, 'sort.cc'), PROGRAM);
  bin = join(dir, 'sort');
  const r = spawnSync('g++', ['-O1', '-std=c++17', '-o', bin, join(dir, 'sort.cc')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`g++ (needed for the native addon too) failed: ${r.stderr}`);
}, 120_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function stdSort(keys: number[]): number[] {
  const r = spawnSync(bin, [], { input: `${keys.length}\n${keys.join('\n')}\n`, encoding: 'utf8', maxBuffer: 1 << 28 });
  expect(r.status).toBe(0);
  return r.stdout.trim().split('\n').filter(Boolean).map(Number);
}

function killer(n: number): number[] {
  const r = spawnSync(bin, ['kill', String(n)], { encoding: 'utf8', maxBuffer: 1 << 28 });
  expect(r.status).toBe(0);
  return r.stdout.trim().split('\n').map(Number);
}

/** The input indices in the order rmap's runs come out (the index rides in the device field). */
async function rmapOrder(keys: number[], runsInMemory: number, heapInMemory?: number): Promise<{ order: number[]; spilled: boolean; virtOk: boolean }> /* virtOk: every record came back whole */ {
  const runs = new RmapRuns(runsInMemory, undefined, heapInMemory);
  keys.forEach((k, i) => runs.push(k, 1, i, i % 3 === 0 ? 2n ** 63n + BigInt(i) : i * 7));
  const spilled = runs.spilled;
  const order: number[] = [];
  let virtOk = true;
  let keysOk = true;
  for await (const c of runs.sorted()) {
    for (let i = 0; i < c.n; i++) {
      const k = c.order[i];
      const idx = c.u32[8 * k + 4];
      order.push(idx);
      if (c.f64[4 * k] !== keys[idx]) keysOk = false;
      const virt = (BigInt(c.u32[8 * k + 6]) << 32n) | BigInt(c.u32[8 * k + 5]);
      if (virt !== (idx % 3 === 0 ? 2n ** 63n + BigInt(idx) : BigInt(idx * 7))) virtOk = false;
    }
  }
  return { order, spilled, virtOk: virtOk && keysOk };
}

/** A deterministic pseudo-random sequence (no Math.random: a failure must reproduce). */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const spillFiles = () => readdirSync(tmpdir()).filter((f) => f.startsWith('dmthin-rmap-'));

describe('rmap sorts runs as std::sort does, in memory and spilled to a file', () => {
  const rnd = lcg(11);
  const cases: [string, number[]][] = [
    ['few distinct keys (many ties)', Array.from({ length: 5000 }, () => Math.floor(rnd() * 40))],
    ['random keys with some ties', Array.from({ length: 20000 }, () => Math.floor(rnd() * 15000))],
    ['sorted with ties', Array.from({ length: 3000 }, (_, i) => Math.floor(i / 3))],
    ['reversed', Array.from({ length: 3000 }, (_, i) => 3000 - i)],
    ['all equal', Array.from({ length: 2000 }, () => 5)],
    ['one run', [7]],
    // An origin's runs, then its snapshot's: std::sort falls back to heapsort on many segments, ties in each.
    ['two sorted copies of the same keys', [...Array.from({ length: 5000 }, (_, i) => i), ...Array.from({ length: 5000 }, (_, i) => i)]],
    ['two sorted sequences interleaving', [...Array.from({ length: 5000 }, (_, i) => 2 * i), ...Array.from({ length: 5000 }, (_, i) => 2 * i + 1)]],
  ];

  // Each case with the addon's steps (native/std_sort.cc: the partitions over the file, the sorts of 256 keys and more) and with the JS steps alone.
  test.each(cases.flatMap(([what, keys]) => [[`${what}, addon`, keys, 'addon'] as const, [`${what}, JS`, keys, 'js'] as const]))('%s', async (_what, keys, impl) => {
    const want = stdSort(keys);
    const saved = { sort: nativeSort.fn, partition: filePartition.fn };
    nativeSort.fn = impl === 'js' ? null : undefined;
    filePartition.fn = impl === 'js' ? null : undefined;
    try {
      // heapInMemory = bound: a segment left to heapsort above the bound is sorted over the file; above the
      // bound and up to heapInMemory, by its keys in memory and gathered in several chunks.
      for (const [bound, heapInMemory] of [[1 << 16], [16], [100], [1000], [16, 16], [100, 100], [1000, 1000], [16, 100], [100, 1000]]) {
        const got = await rmapOrder(keys, bound, heapInMemory);
        expect(got.spilled).toBe(keys.length > bound);
        expect(got.virtOk).toBe(true);
        expect(got.order).toEqual(want);
      }
      // The addon's steps ran, not the JS a second time (a lookup that finds no function falls back silently).
      if (impl === 'addon' && keys.length >= 256) expect([typeof nativeSort.fn, typeof filePartition.fn]).toEqual(['function', 'function']);
    } finally {
      nativeSort.fn = saved.sort;
      filePartition.fn = saved.partition;
    }
  });

  test('two sorted copies drive heapsort over segments above the bound: in memory, or over the file when told', async () => {
    const keys = [...Array.from({ length: 5000 }, (_, i) => i), ...Array.from({ length: 5000 }, (_, i) => i)];
    const proto = RmapRuns.prototype as unknown as { heapSort: (a: number, b: number) => void; heapSortByKeys: (a: number, b: number) => unknown };
    const overFile = jest.spyOn(proto, 'heapSort');
    const inMemory = jest.spyOn(proto, 'heapSortByKeys');
    try {
      await rmapOrder(keys, 64, 128);
      // Up to 128 by keys in memory, longer ones over the file.
      expect([overFile.mock.calls.every(([a, b]) => b - a > 128), inMemory.mock.calls.some(([a, b]) => b - a > 64)]).toEqual([true, true]);
      overFile.mockClear();
      inMemory.mockClear();
      await rmapOrder(keys, 64, 64);
      expect([overFile.mock.calls.some(([a, b]) => b - a > 64), inMemory.mock.calls.length]).toEqual([true, 0]);
    } finally {
      overFile.mockRestore();
      inMemory.mockRestore();
    }
  });

  test('keys that drive std::sort into heapsort while the segment exceeds the bound', async () => {
    const keys = killer(20000);
    const want = stdSort(keys);
    // The adversary's keys are a permutation: sorted, the order is the inverse permutation.
    expect(want.map((i) => keys[i])).toEqual(Array.from({ length: 20000 }, (_, i) => i));
    // The heapsort fallback must run over the file (a segment above the bound) for this to test it.
    const heapSort = jest.spyOn(RmapRuns.prototype as unknown as { heapSort: (a: number, b: number) => void }, 'heapSort');
    for (const bound of [64, 5000, 1 << 16]) {
      expect((await rmapOrder(keys, bound)).order).toEqual(want);
      expect((await rmapOrder(keys, bound, bound)).order).toEqual(want);
    }
    expect(heapSort.mock.calls.some(([a, b]) => b - a > 5000)).toBe(true);
    heapSort.mockRestore();
  }, 60_000);

  test('a heapsort over the file lets an abort in between its steps (an outside test: keys that forced one of 1.1M runs kept Ctrl-C waiting ~40 s)', async () => {
    const keys = killer(20000);
    const runs = new RmapRuns(64, undefined, 64);
    keys.forEach((k, i) => runs.push(k, 1, i, i));
    const ac = new AbortController();
    const proto = RmapRuns.prototype as unknown as { adjustHeap: (...a: unknown[]) => void };
    const real = proto.adjustHeap;
    let calls = 0;
    const spy = jest.spyOn(proto, 'adjustHeap').mockImplementation(function (this: unknown, ...a: unknown[]) {
      if (++calls === 2000) ac.abort();
      return real.apply(this, a);
    });
    try {
      const err = await (async () => {
        for await (const _ of runs.sorted(ac.signal));
      })().catch((e) => e);
      expect(err).toMatchObject({ name: 'AbortError' });
      // Seen at the next turn of the loop (4,096 steps at most), not once the whole heapsort is over (~30,000).
      expect(calls).toBeLessThan(2000 + 4096 + 1);
    } finally {
      spy.mockRestore();
    }
  });

  test('the temporary file never has a name in TMPDIR, and is gone when the iteration ends early', async () => {
    const before = spillFiles();
    const runs = new RmapRuns(16);
    for (let i = 0; i < 1000; i++) runs.push(1000 - i, 1, i, i);
    expect(runs.spilled).toBe(true);
    expect(spillFiles()).toEqual(before);
    for await (const c of runs.sorted()) {
      expect(c.n).toBeGreaterThan(0);
      break;
    }
    // Closed: a second iteration has nothing left to read.
    await expect(runs.sorted().next()).rejects.toThrow();
  });

  describe('the temporary file', () => {
    /** This process's open files in `d` that were unlinked. */
    const openDeleted = (d: string) =>
      readdirSync('/proc/self/fd')
        .map((fd) => {
          try {
            return readlinkSync(`/proc/self/fd/${fd}`);
          } catch {
            return '';
          }
        })
        .filter((l) => l.startsWith(`${d}/dmthin-rmap-`) && l.endsWith(' (deleted)'));

    test('is made in the directory given, open but already unlinked, and closed when the sort ends', async () => {
      const d = mkdtempSync(join(dir, 'tmpdir-'));
      const runs = new RmapRuns(16, d);
      for (let i = 0; i < 100; i++) runs.push(i, 1, 0, i);
      expect(runs.spilled).toBe(true);
      expect(openDeleted(d)).toHaveLength(1);
      expect(readdirSync(d)).toEqual([]);
      let n = 0;
      for await (const c of runs.sorted()) n += c.n;
      expect(n).toBe(100);
      expect(openDeleted(d)).toEqual([]);
    });

    test('a directory that cannot hold it is a SystemCallError naming it', () => {
      const missing = join(dir, 'missing');
      const runs = new RmapRuns(16, missing);
      let err: unknown;
      try {
        for (let i = 0; i < 100; i++) runs.push(i, 1, 0, i);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(SystemCallError);
      expect(err).toMatchObject({ code: 'ENOENT', path: missing });
      expect((err as Error).message).toMatch(/^cannot create rmap's temporary file in .*missing: /);
    });

    test('the CLI puts it in TMPDIR: an unusable one is exit 1, one line naming it, nothing on stdout', () => {
      using img = tempImage(fixtureImage('snapshots'), 'snapshots.bin');
      const env = { ...process.env, TMPDIR: join(dir, 'missing'), DMTHIN_RMAP_RUNS_IN_MEMORY: '16' };
      const r = runCli(['rmap', '--region', `0..${2 ** 40}`, img.path], { env });
      expect(r).toMatchObject({ status: 1, stdout: '' });
      expect(r.stderr).toMatch(/^dmthin rmap: cannot create rmap's temporary file in .*missing: .*\[ENOENT\]\n$/);
      // The same with room: the whole output.
      const ok = runCli(['rmap', '--region', `0..${2 ** 40}`, img.path], { env: { ...env, TMPDIR: dir } });
      expect(ok).toMatchObject({ status: 0, stderr: '' });
      expect(ok.stdout.split('\n').length).toBeGreaterThan(17);
      expect(ok.stdout).toBe(runCli(['rmap', '--region', `0..${2 ** 40}`, img.path]).stdout);
    });
  });
});

describe('rmap\'s lines, written by the addon and by the JS loop', () => {
  /** thin_rmap's line, built with BigInt arithmetic (its virtual end in u64 arithmetic). */
  const line = (r: { data: number; len: number; dev: number; virt: bigint }) =>
    `data ${r.data}..${BigInt(r.data) + BigInt(r.len)} -> thin(${r.dev}) ${r.virt}..${BigInt.asUintN(64, r.virt + BigInt(r.len))}\n`;

  async function text(runs: { data: number; len: number; dev: number; virt: bigint }[], bound: number, lines: 'addon' | 'js'): Promise<string> {
    const held = new RmapRuns(bound);
    for (const r of runs) held.push(r.data, r.len, r.dev, r.virt < 2n ** 53n ? Number(r.virt) : r.virt);
    const parts: Buffer[] = [];
    const out = new Writable({
      write(chunk: Buffer, _enc, cb) {
        parts.push(Buffer.from(chunk));
        cb();
      },
    });
    const sink = new OutputSink(out, 'test');
    const saved = rmapText.lines;
    rmapText.lines = lines === 'js' ? null : undefined;
    try {
      await writeRmapText(held, sink);
      await sink.flush();
    } finally {
      rmapText.lines = saved;
    }
    return Buffer.concat(parts).toString('latin1');
  }

  test.each(['addon', 'js'] as const)('%s: every run, 64-bit virtual ends wrapped as thin_rmap prints them, across many output chunks', async (lines) => {
    const rnd = lcg(5);
    // Distinct data begins: the print order is plain sorted order here (ties are the sort's tests above).
    const runs = Array.from({ length: 30_000 }, (_, i) => ({
      data: i * 37 + (i % 2 === 0 ? 0 : 2 ** 39),
      len: 1 + Math.floor(rnd() * 36),
      dev: Math.floor(rnd() * 2 ** 32),
      virt: i % 7 === 0 ? 2n ** 64n - BigInt(1 + Math.floor(rnd() * 40)) : i % 5 === 0 ? 2n ** 53n + BigInt(i) : BigInt(Math.floor(rnd() * 2 ** 40)),
    }));
    const want = [...runs].sort((a, b) => a.data - b.data).map(line).join('');
    for (const bound of [1 << 16, 1000]) expect(await text(runs, bound, lines)).toBe(want);
    if (lines === 'addon') expect(rmapText.lines).not.toBeNull();
  });
});
