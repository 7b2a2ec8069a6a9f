/**
 * The root-VM runner's plan (scripts/vm/plan.cjs), without booting: guests
 * and vCPUs per machine, the split of the test files between guests, and
 * which files run again after a guest-kernel fault (a path no test can
 * provoke on demand in a real guest).
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

const plan = require('../../scripts/vm/plan.cjs') as {
  ISOLATED: string;
  shardCount(env: NodeJS.ProcessEnv, cores: number): number;
  guestCpus(guests: number, env: NodeJS.ProcessEnv, cores: number): number;
  WEIGHTS: Record<string, number>;
  splitForShards(files: string[], n: number, weights?: Record<string, number>, reserve?: number): string[][];
  isolatedWeight(files: string[], weights?: Record<string, number>): number;
  kernelFault(log: string): string | null;
  filesToRetry(output: string, files: string[]): string[];
};

const VM_DIR = join(__dirname, '..', 'vm');
const vmFiles = readdirSync(VM_DIR).filter((f) => f.endsWith('.vm.test.ts'));

describe('guests and vCPUs', () => {
  test('two guests where there are two cores or more, one on a single core; DMTHIN_VM_SHARDS wins', () => {
    expect([1, 2, 4, 16].map((c) => plan.shardCount({}, c))).toEqual([1, 2, 2, 2]);
    expect(plan.shardCount({ DMTHIN_VM_SHARDS: '3' }, 2)).toBe(3);
    expect(plan.shardCount({ DMTHIN_VM_SHARDS: '0' }, 2)).toBe(2);
    expect(plan.shardCount({ DMTHIN_VM_SHARDS: 'two' }, 2)).toBe(2);
  });

  test('no more vCPU threads than cores: the cores divided among the guests running at once, at least one each', () => {
    expect(plan.guestCpus(2, {}, 2)).toBe(1);
    expect(plan.guestCpus(1, {}, 2)).toBe(2);
    expect(plan.guestCpus(3, {}, 2)).toBe(1);
    expect(plan.guestCpus(2, {}, 8)).toBe(4);
    expect(plan.guestCpus(2, {}, 1)).toBe(1);
    expect(plan.guestCpus(0, {}, 2)).toBe(2);
    expect(plan.guestCpus(2, { DMTHIN_VM_CPUS: '2' }, 2)).toBe(2);
    expect(plan.guestCpus(2, { DMTHIN_VM_CPUS: '-1' }, 2)).toBe(1);
  });
});

describe('the split of the suite', () => {
  const main = vmFiles.filter((f) => !new RegExp(plan.ISOLATED).test(f)).map((f) => join(VM_DIR, f));

  test('the isolated pattern names the isolated files only', () => {
    const isolated = vmFiles.filter((f) => new RegExp(plan.ISOLATED).test(f));
    expect(isolated).toEqual(vmFiles.filter((f) => f.includes('.isolated.')));
    expect(isolated.length).toBeGreaterThan(0);
    expect(main.length).toBeGreaterThan(isolated.length);
  });

  test('every test file of the suite has a measured weight, and no weight names a file that is gone', () => {
    expect(vmFiles.filter((f) => !(f in plan.WEIGHTS))).toEqual([]);
    expect(Object.keys(plan.WEIGHTS).filter((f) => !vmFiles.includes(f))).toEqual([]);
  });

  test('each file in exactly one guest; the guests within the heaviest file of each other', () => {
    for (const n of [1, 2, 3]) {
      const shards = plan.splitForShards(main, n);
      expect(shards).toHaveLength(n);
      expect(shards.flat().sort()).toEqual([...main].sort());
      const w = shards.map((s) => s.reduce((t, f) => t + plan.WEIGHTS[f.split('/').pop()!], 0));
      expect(Math.max(...w) - Math.min(...w)).toBeLessThanOrEqual(Math.max(...Object.values(plan.WEIGHTS)));
    }
    expect(plan.splitForShards(main, 2)).toEqual(plan.splitForShards([...main].reverse(), 2));
  });

  test("the isolated boot's weight starts on the first guest, which then gets less of the rest", () => {
    const reserve = plan.isolatedWeight(vmFiles);
    expect(reserve).toBe(plan.WEIGHTS['status-failure.isolated.vm.test.ts']);
    const [a, b] = plan.splitForShards(main, 2, plan.WEIGHTS, reserve);
    const w = (g: string[]) => g.reduce((t, f) => t + plan.WEIGHTS[f.split('/').pop()!], 0);
    expect(Math.abs(w(a) + reserve - w(b))).toBeLessThanOrEqual(Math.max(...Object.values(plan.WEIGHTS)));
    // Three files of weight 1: without a reserve the first guest gets two, with 1.5 reserved one.
    expect(plan.splitForShards(['x.vm.test.ts', 'y.vm.test.ts', 'z.vm.test.ts'], 2, {})).toEqual([['x.vm.test.ts', 'z.vm.test.ts'], ['y.vm.test.ts']]);
    expect(plan.splitForShards(['x.vm.test.ts', 'y.vm.test.ts', 'z.vm.test.ts'], 2, {}, 1.5)).toEqual([['z.vm.test.ts'], ['x.vm.test.ts', 'y.vm.test.ts']]);
    // One guest: everything in it, whatever the reserve.
    expect(plan.splitForShards(['x.vm.test.ts', 'y.vm.test.ts'], 1, {}, 5)).toEqual([['x.vm.test.ts', 'y.vm.test.ts']]);
    expect(plan.isolatedWeight(['a.vm.test.ts', 'b.isolated.vm.test.ts', 'c.isolated.vm.test.ts'], { 'b.isolated.vm.test.ts': 0.5 })).toBe(1.5);
  });

  test('more guests than files: one file each; unknown files weigh one', () => {
    expect(plan.splitForShards(['b.vm.test.ts', 'a.vm.test.ts'], 5, {})).toEqual([['a.vm.test.ts'], ['b.vm.test.ts']]);
    expect(plan.splitForShards(['x.vm.test.ts', 'y.vm.test.ts', 'z.vm.test.ts'], 2, { 'x.vm.test.ts': 2 })).toEqual([['x.vm.test.ts'], ['y.vm.test.ts', 'z.vm.test.ts']]);
  });
});

describe('after a guest-kernel fault', () => {
  const files = ['test/vm/a.vm.test.ts', 'test/vm/b.vm.test.ts', 'test/vm/c.vm.test.ts', 'test/vm/d.vm.test.ts'];

  test('the files without a PASS line run again (colours and guest prefixes allowed)', () => {
    const output = [
      '[g1] \x1b[0m\x1b[7m\x1b[1m\x1b[32m PASS \x1b[39m\x1b[22m\x1b[27m\x1b[0m \x1b[2mtest/vm/\x1b[22m\x1b[1ma.vm.test.ts\x1b[22m (12.3 s)',
      '[g1] \x1b[1m\x1b[31m FAIL \x1b[39m\x1b[22m test/vm/b.vm.test.ts (40 s)',
      '[g1] PASS test/vm/d.vm.test.ts (3 s)',
      '[g1] [  123.4] BUG: unable to handle page fault for address: 0000000000001234',
    ].join('\n');
    // Jest colours the folder and the file name apart: only plain text counts.
    expect(plan.filesToRetry(output, files)).toEqual(['test/vm/b.vm.test.ts', 'test/vm/c.vm.test.ts']);
  });

  test('a file whose name only starts like a passed one still runs again', () => {
    expect(plan.filesToRetry('PASS test/vm/a.vm.test.ts.bak\nPASS test/vm/ab.vm.test.ts (1 s)', ['test/vm/a.vm.test.ts'])).toEqual(['test/vm/a.vm.test.ts']);
  });

  test('nothing passed: every file again; every file passed: none', () => {
    expect(plan.filesToRetry('', files)).toEqual(files);
    expect(plan.filesToRetry(files.map((f) => `PASS ${f} (1 s)`).join('\n'), files)).toEqual([]);
  });

  test('the fault is named by its first line; a clean log has none', () => {
    expect(plan.kernelFault('ok\n[ 9.1] Oops: 0000 [#1] PREEMPT SMP NOPTI\n[ 9.2] general protection fault')).toBe('Oops: 0000 [#1] PREEMPT SMP NOPTI');
    expect(plan.kernelFault('[ 1.0] invalid opcode: 0000 [#1]')).toBe('invalid opcode: 0000');
    expect(plan.kernelFault('[ 2.0] kernel BUG at drivers/md/dm-bufio.c:1234!')).toBe('kernel BUG at drivers/md/dm-bufio.c:1234!');
    expect(plan.kernelFault('device-mapper: thin: 253:2: switching pool to read-only mode\nPASS test/vm/a.vm.test.ts')).toBeNull();
  });
});
