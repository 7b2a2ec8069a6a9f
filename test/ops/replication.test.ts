/**
 * The replication cycle (src/ops/replication.ts) against a model pool and a
 * model dmthin receiver, with a crash (the process killed) injected at every
 * host step, before or after the step took effect. The receiver model applies
 * the rules of src/stream/receive/state.ts checkBase: a stream that does not
 * follow what the target holds is refused, which here fails the test.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { StreamError } from '../../src/errors';
import { runCycle, type ReplicationHost, type ReplicationSettings, type ReplicationState, type TransferResult } from '../../src/ops/replication';

class Crash extends Error {}

interface Snap {
  version: number;
  /** Its identity (pool, id, creation time, transaction): the same for an id deleted and made again at the same pool time. */
  key: string;
  /** Writes to the device itself: each changes its mapping root. */
  written?: number;
  /** The kernel's creation_time and snapshotted_time (create_snap gives the snapshot and its origin a new pool time). */
  created?: number;
  snapshotted?: number;
}

/** The model's mapping-root digest: identity, content and writes. */
const rootOf = (s: Snap) => createHash('sha256').update(`${s.key}/${s.version}/${s.written ?? 0}`).digest('hex');

/** A pool, a receiver and a state file; `crashAt` kills the "process" at that host step. */
class World {
  pool = new Map<number, Snap>([[1, { version: 0, key: 'origin' }]]);
  sourceVersion = 0;
  /** The pool's time: advanced by each create_snap only, as the kernel does. */
  time = 0;
  suspended = new Set<string>();
  stateFile: string | null = null;
  target: { current: { key: string; digest: string; version: number; root: string } | null; pending: string | null; garbage: boolean } = { current: null, pending: null, garbage: false };
  violations: string[] = [];
  step = 0;
  creations = 0;
  crashAt = -1;
  /** After the step (the effect happened) or before it. */
  crashAfter = false;
  thinActive = true;
  /** The receiver refuses an increment whose base root is not what it holds (format 4); else it checks identities only (format 3). */
  receiverChecksRoot = false;
  /** The target was replaced since the last receive: the receiver refuses any increment (base-mismatch) before writing. */
  targetReplaced = false;
  /** The thin was resized since its base was received: the receiver refuses an increment (size-changed) before writing. */
  resized = false;

  private async op<T>(what: string, effect: () => T): Promise<T> {
    const n = this.step++;
    if (n === this.crashAt && !this.crashAfter) throw new Crash(`before ${what}`);
    const r = effect();
    if (n === this.crashAt && this.crashAfter) throw new Crash(`after ${what}`);
    return r;
  }

  host(): ReplicationHost {
    return {
      readState: async () => (this.stateFile ? (JSON.parse(this.stateFile) as ReplicationState) : null),
      writeState: (s) => this.op('writeState', () => void (this.stateFile = JSON.stringify(s))),
      thinIds: async () => new Set(this.pool.keys()),
      mappingRoot: async (id) => {
        const t = this.pool.get(id);
        return t ? rootOf(t) : null;
      },
      thinTimes: async (id) => {
        const t = this.pool.get(id);
        return t ? { creationTime: t.created ?? 0, snapshottedTime: t.snapshotted ?? 0 } : null;
      },
      activeUnsuspended: async (id) => (id === 1 && this.thinActive && !this.suspended.has('thin1') ? ['thin1'] : []),
      isSuspended: async (n) => this.suspended.has(n),
      suspend: (n) => this.op('suspend', () => void this.suspended.add(n)),
      resume: (n) => this.op('resume', () => void this.suspended.delete(n)),
      deviceSize: async () => 1 << 20,
      createSnap: (id, origin) =>
        this.op('createSnap', () => {
          if (this.pool.has(id)) throw new Error(`create_snap ${id}: exists`);
          if (this.thinActive && !this.suspended.has('thin1')) this.violations.push(`create_snap ${id} while thin1 was not suspended`);
          const o = this.pool.get(origin)!;
          this.time++;
          o.snapshotted = this.time;
          this.pool.set(id, { version: o.version, key: `snap${id}#${++this.creations}`, created: this.time, snapshotted: this.time });
        }),
      deleteThin: (id) =>
        this.op('deleteThin', () => {
          const s = this.pool.get(id);
          if (!s) throw new Error(`delete ${id}: no such thin`);
          if (this.target.current?.key === s.key) this.violations.push(`deleted snapshot ${id}, the one the target holds`);
          this.pool.delete(id);
        }),
      transfer: async (snap, base): Promise<TransferResult> => {
        const s = this.pool.get(snap)!;
        const b = base === null ? null : this.pool.get(base)!;
        const digest = `${s.key}<-${b?.key ?? 'full'}`;
        const t = this.target;
        if (b) {
          // A replaced target (a new file, a device made again): the receiver's state does not describe it.
          if (this.targetReplaced) throw new StreamError('base-mismatch', `target was replaced: it does not hold base ${base}`);
          if (this.resized) throw new StreamError('size-changed', `base ${base} was received at another size`);
          const ok = (t.current?.key === b.key && t.pending === null) || t.pending === digest || t.current?.digest === digest;
          if (!ok) {
            this.violations.push(`receiver refused ${digest}: it holds ${t.current?.key ?? 'nothing'}${t.pending ? ` (pending ${t.pending})` : ''}`);
            throw new Error('refused');
          }
          if (t.current && t.current.key === b.key && t.current.root !== rootOf(b)) {
            if (this.receiverChecksRoot) throw new StreamError('base-mismatch', `base ${base} is not what the target holds`);
            this.violations.push(`applied ${digest} on a target holding other mappings than its base ${base}`);
          }
        }
        // Three crash points in a transfer: before anything, with the target half written, after it applied all.
        await this.op('transfer-start', () => undefined);
        await this.op('transfer-mid', () => {
          t.pending = digest;
          t.garbage = true;
        });
        await this.op('transfer-end', () => {
          t.current = { key: s.key, digest, version: s.version, root: rootOf(s) };
          t.pending = null;
          t.garbage = false;
        });
        return { key: s.key, mappingRoot: rootOf(s), digest, bytes: 1, dataBlocks: 1, discardBlocks: 0 };
      },
      now: () => new Date(1_700_000_000_000 + this.step * 1000),
    };
  }

  write(): void {
    this.sourceVersion++;
    this.pool.get(1)!.version = this.sourceVersion;
  }
}

const settings = (keep: number): ReplicationSettings => ({ pool: 'pool', thin: 1, ids: { first: 100, last: 120 }, keep });

async function cycle(w: World, keep: number): Promise<boolean> {
  try {
    await runCycle(w.host(), settings(keep), 'state.json');
    return true;
  } catch (e) {
    if (e instanceof Crash) return false;
    throw e;
  }
}

describe('replication cycle under crashes', () => {
  it('a clean run: full, then increments; only `keep` snapshots remain', async () => {
    const w = new World();
    for (let i = 0; i < 5; i++) {
      w.write();
      expect(await cycle(w, 2)).toBe(true);
      expect(w.target.current!.version).toBe(w.sourceVersion);
    }
    expect([...w.pool.keys()].filter((id) => id >= 100).sort()).toEqual(JSON.parse(w.stateFile!).confirmed.map((c: { devId: number }) => c.devId).sort());
    expect(JSON.parse(w.stateFile!).confirmed).toHaveLength(2);
    expect(w.violations).toEqual([]);
  });

  it('a crash at any step, before or after it took effect, then restarts: target equal, nothing leaked, never out of order', async () => {
    let crashes = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 4 }), // cycles before the crashing one
        fc.nat({ max: 40 }), // the step (of the crashing cycle) to crash at
        fc.boolean(),
        fc.integer({ min: 1, max: 3 }),
        fc.boolean(),
        async (before, at, after, keep, active) => {
          const w = new World();
          w.thinActive = active;
          for (let i = 0; i < before; i++) {
            w.write();
            expect(await cycle(w, keep)).toBe(true);
          }
          w.write();
          w.step = 0;
          w.crashAt = at;
          w.crashAfter = after;
          if (!(await cycle(w, keep))) crashes++;
          w.crashAt = -1;
          // Restart (possibly twice: a resumed transfer sends the old snapshot first), with more writes meanwhile.
          w.write();
          expect(await cycle(w, keep)).toBe(true);
          w.write();
          expect(await cycle(w, keep)).toBe(true);
          const st = JSON.parse(w.stateFile!) as ReplicationState;
          expect(w.violations).toEqual([]);
          expect(w.target.garbage).toBe(false);
          expect(w.target.current!.version).toBe(w.sourceVersion);
          expect(w.target.current!.key).toBe(st.confirmed.at(-1)!.key);
          expect(st.pending).toBeNull();
          expect(st.doomed).toEqual([]);
          expect(st.confirmed.length).toBeLessThanOrEqual(keep);
          const ours = [...w.pool.keys()].filter((id) => id >= 100).sort((a, b) => a - b);
          expect(ours).toEqual(st.confirmed.map((c) => c.devId).sort((a, b) => a - b));
          expect([...w.suspended]).toEqual([]);
        },
      ),
      { numRuns: 400 },
    );
    // Both kinds of outcome happen: the crash step is within the cycle often enough.
    expect(crashes).toBeGreaterThan(100);
  });

  it('refuses a state file of another thin or another id range', async () => {
    const w = new World();
    w.write();
    await cycle(w, 1);
    await expect(runCycle(w.host(), { ...settings(1), thin: 2 }, 'state.json')).rejects.toThrow(/records the replication of thin 1/);
    await expect(runCycle(w.host(), { ...settings(1), ids: { first: 100, last: 130 } }, 'state.json')).rejects.toThrow(/cannot change/);
  });

  it('an id taken by another program between choosing and create_snap (EEXIST): nothing recorded, the thin resumed, and the next cycle never deletes that thin (found by an outside hunt: left pending, a restart deleted another replicator\'s snapshot)', async () => {
    const w = new World();
    w.write();
    await cycle(w, 1);
    w.write();
    const h = w.host();
    const racing: ReplicationHost = {
      ...h,
      createSnap: async (id) => {
        w.pool.set(id, { version: 0, key: `foreign${id}` }); // another replicator got there first
        throw Object.assign(new Error(`create_snap ${id}: File exists`), { code: 'EEXIST' });
      },
    };
    await expect(runCycle(racing, settings(1), 'state.json')).rejects.toMatchObject({ code: 'EEXIST', message: expect.stringMatching(/was taken by another program .* nothing of it is recorded/) });
    const st = JSON.parse(w.stateFile!) as ReplicationState;
    expect(st.pending).toBeNull();
    expect(w.suspended.size).toBe(0);
    const foreign = [...w.pool].find(([, t]) => t.key.startsWith('foreign'))!;
    const r = await runCycle(w.host(), settings(1), 'state.json');
    expect(r.recovered).toEqual([]);
    expect(w.pool.get(foreign[0])?.key).toBe(foreign[1].key);
    expect(w.target.current!.version).toBe(w.sourceVersion);
  });

  // Killed after recording the id it chose, before create_snap; meanwhile another program made a
  // thin of that id (outside hunt: the restart deleted another replicator's base, and a user's thin).
  it.each([
    ['another replication\'s snapshot (of another thin)', (w: World, id: number) => {
      w.time++;
      w.pool.set(id, { version: 0, key: `foreign-snap${id}`, created: w.time, snapshotted: w.time });
    }],
    ['a thin made by hand (create_thin: the pool time as it is)', (w: World, id: number) => {
      w.pool.set(id, { version: 0, key: `foreign-thin${id}`, created: w.time, snapshotted: w.time });
    }],
  ])('an interrupted create_snap whose id another program then took (%s): the restart leaves that thin, and catches up', async (_n, take) => {
    const w = new World();
    w.write();
    await cycle(w, 1);
    w.write();
    // Killed at create_snap, before it took effect.
    const h = w.host();
    const dying: ReplicationHost = { ...h, createSnap: async () => { throw new Crash('before createSnap'); } };
    expect(await runCycle(dying, settings(1), 'state.json').then(() => 'ok', (e) => (e instanceof Crash ? 'crash' : e))).toBe('crash');
    const pending = (JSON.parse(w.stateFile!) as ReplicationState).pending!;
    expect(pending.phase).toBe('creating');
    take(w, pending.devId);
    const theirs = w.pool.get(pending.devId)!.key;
    const r = await runCycle(w.host(), settings(1), 'state.json');
    expect(r.notOurs).toBe(pending.devId);
    expect(r.recovered).toEqual([]);
    expect(w.pool.get(pending.devId)?.key).toBe(theirs);
    expect(w.target.current!.version).toBe(w.sourceVersion);
    expect(w.violations).toEqual([]);
  });

  it('killed right after its create_snap took effect: the restart deletes that snapshot as its own', async () => {
    const w = new World();
    w.write();
    await cycle(w, 1);
    w.write();
    const h = w.host();
    const dying: ReplicationHost = { ...h, createSnap: async (id, origin) => { await h.createSnap(id, origin); throw new Crash('after createSnap'); } };
    expect(await runCycle(dying, settings(1), 'state.json').then(() => 'ok', (e) => (e instanceof Crash ? 'crash' : e))).toBe('crash');
    const pending = (JSON.parse(w.stateFile!) as ReplicationState).pending!;
    expect(w.pool.has(pending.devId)).toBe(true);
    const r = await runCycle(w.host(), settings(1), 'state.json');
    expect(r.recovered).toEqual([pending.devId]);
    expect(r.notOurs).toBeUndefined();
    expect(w.target.current!.version).toBe(w.sourceVersion);
  });

  it('a base deleted by hand: the next cycle sends a full stream', async () => {
    const w = new World();
    w.write();
    await cycle(w, 1);
    const st = JSON.parse(w.stateFile!) as ReplicationState;
    w.pool.delete(st.confirmed[0].devId);
    w.write();
    const r = await runCycle(w.host(), settings(1), 'state.json');
    expect(r.fullReason).toBe('base-gone');
    expect(r.base).toBeNull();
    expect(w.target.current!.version).toBe(w.sourceVersion);
  });
});

describe('a base that changed since it was sent', () => {
  /** Two cycles; returns the base the target holds. */
  async function twoCycles(w: World): Promise<number> {
    w.write();
    expect(await cycle(w, 1)).toBe(true);
    w.write();
    expect(await cycle(w, 1)).toBe(true);
    return (JSON.parse(w.stateFile!) as ReplicationState).confirmed[0].devId;
  }
  function expectFullAndKept(r: Awaited<ReturnType<typeof runCycle>>, w: World, base: number) {
    expect(r).toMatchObject({ base: null, fullReason: 'base-changed', abandoned: base });
    expect(w.violations).toEqual([]);
    expect(w.target.current!.version).toBe(w.sourceVersion);
    // Left in the pool (it may be someone's device), and no longer in the state.
    expect(w.pool.has(base)).toBe(true);
    const st = JSON.parse(w.stateFile!) as ReplicationState;
    expect(st.confirmed.map((c) => c.devId)).toEqual([r.snapshot]);
  }

  it('an id deleted and made again with the same identity (format 3 receiver, identity checks only): sent in full, the new thin kept', async () => {
    const w = new World();
    const base = await twoCycles(w);
    const old = w.pool.get(base)!;
    w.pool.delete(base);
    w.pool.set(base, { key: old.key, version: 0 }); // create_thin under the id at the same pool time: same identity, empty
    w.write();
    expectFullAndKept(await runCycle(w.host(), settings(1), 'state.json'), w, base);
    // And the next cycle is an increment against the new snapshot again.
    w.write();
    const r = await runCycle(w.host(), settings(1), 'state.json');
    expect(typeof r.base).toBe("number");
    expect(r.fullReason).toBeUndefined();
    expect(w.violations).toEqual([]);
  });

  it('a base written after it was sent (format 4 receiver would refuse the increment): sent in full', async () => {
    const w = new World();
    w.receiverChecksRoot = true;
    const base = await twoCycles(w);
    w.pool.get(base)!.written = 1;
    w.write();
    expectFullAndKept(await runCycle(w.host(), settings(1), 'state.json'), w, base);
  });

  it('a state recorded without mapping roots: the receiver refuses the increment before writing, and it is sent again in full', async () => {
    const w = new World();
    w.receiverChecksRoot = true;
    const base = await twoCycles(w);
    const st = JSON.parse(w.stateFile!) as ReplicationState;
    for (const c of st.confirmed) delete c.mappingRoot;
    w.stateFile = JSON.stringify(st);
    w.pool.get(base)!.written = 1;
    w.write();
    expectFullAndKept(await runCycle(w.host(), settings(1), 'state.json'), w, base);
  });
});

describe('a target that no longer holds the base (hunt L item 5)', () => {
  it('an unchanged base the receiver refuses: sent in full as target-lacks-base, the base not abandoned but deleted by keep, as any confirmed snapshot', async () => {
    const w = new World();
    w.write();
    expect(await cycle(w, 1)).toBe(true);
    const base = (JSON.parse(w.stateFile!) as ReplicationState).confirmed[0].devId;
    // The target is replaced by an empty one (a new file, an LV made again).
    w.target = { current: null, pending: null, garbage: false };
    w.targetReplaced = true;
    w.write();
    const r = await runCycle(w.host(), settings(1), 'state.json');
    expect(r).toMatchObject({ base: null, fullReason: 'target-lacks-base', deleted: [base] });
    expect(r.abandoned).toBeUndefined();
    expect(w.pool.has(base)).toBe(false); // was: left in the pool every time, one more snapshot per such cycle
    expect(w.target.current!.version).toBe(w.sourceVersion);
    expect((JSON.parse(w.stateFile!) as ReplicationState).confirmed.map((c) => c.devId)).toEqual([r.snapshot]);
    // The next cycle is an increment again.
    w.targetReplaced = false;
    w.write();
    const next = await runCycle(w.host(), settings(1), 'state.json');
    expect(next.base).toBe(r.snapshot);
    expect(w.violations).toEqual([]);
    expect([...w.pool.keys()].sort((a, b) => a - b)).toEqual([1, next.snapshot]);
  });
});

describe('a full stream where an increment cannot do (hunt L item 6: replicate failed every cycle)', () => {
  it('the thin resized since its base was received (size-changed): sent in full, the unchanged base deleted by keep', async () => {
    const w = new World();
    w.write();
    expect(await cycle(w, 1)).toBe(true);
    const base = (JSON.parse(w.stateFile!) as ReplicationState).confirmed[0].devId;
    w.resized = true;
    w.write();
    const r = await runCycle(w.host(), settings(1), 'state.json');
    expect(r).toMatchObject({ base: null, fullReason: 'size-changed', deleted: [base] });
    expect(r.abandoned).toBeUndefined();
    expect(w.target.current!.version).toBe(w.sourceVersion);
    expect(w.violations).toEqual([]);
  });

  it('asked for (full: a receiving command whose side was reset cannot say why it refuses): sent in full though the base is sound; increments after', async () => {
    const w = new World();
    w.write();
    expect(await cycle(w, 1)).toBe(true);
    const base = (JSON.parse(w.stateFile!) as ReplicationState).confirmed[0].devId;
    w.target = { current: null, pending: null, garbage: false }; // reset, and nothing tells replicate
    w.write();
    const r = await runCycle(w.host(), settings(1), 'state.json', undefined, true);
    expect(r).toMatchObject({ base: null, fullReason: 'asked', deleted: [base] });
    expect(w.target.current!.version).toBe(w.sourceVersion);
    w.write();
    const next = await runCycle(w.host(), settings(1), 'state.json');
    expect(next.base).toBe(r.snapshot);
    expect(w.violations).toEqual([]);
  });
});

describe('--to-command: a receiving command that ends before it is heard', () => {
  // In a child: an unhandled rejection ends a Node 20 process with a stack trace.
  const run = (cmd: string) =>
    spawnSync(
      process.execPath,
      [
        '-e',
        `const { commandReceiver } = require(${JSON.stringify(require.resolve('../../dist/ops/replicate.js'))});
         const rx = commandReceiver(${JSON.stringify(cmd)});
         setTimeout(() => rx.done.then(() => console.log('ok'), (e) => console.log(e.code + ' ' + e.message)), 500);`,
      ],
      { encoding: 'utf8', timeout: 20_000 },
    );

  test('exits 3 at once: its verdict waits for the sender, no unhandled rejection', () => {
    const r = run('exit 3');
    expect({ status: r.status, stderr: r.stderr, stdout: r.stdout }).toEqual({
      status: 0,
      stderr: '',
      stdout: 'ECOMM the receiving command exited with status 3: the snapshot is kept and sent again next cycle\n',
    });
  });

  test('killed at once', () => {
    const r = run('kill -9 $$');
    expect(r.stdout).toBe('ECOMM the receiving command was killed by SIGKILL: the snapshot is kept and sent again next cycle\n');
    expect(r.status).toBe(0);
  });
});
