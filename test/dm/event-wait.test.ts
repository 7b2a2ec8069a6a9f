/**
 * The cancellable event wait without a kernel: the arm / read counter / wait
 * order and its re-check after wakeups for other devices, abort (before and
 * during a wait), the timer fallback when DM_DEV_ARM_POLL is missing, errors;
 * DeviceMapper.wait over a scripted transport; and the addon's DmPoll on a
 * FIFO (readability through uv_poll, close ending a wait, no worker thread
 * held while waiting). The real control node is in test/vm/events.vm.test.ts.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceMapper } from '../../src/dm/device-mapper';
import { type DmEventPoller, waitForEventChange } from '../../src/dm/event-wait';
import { Cmd, IOCTL, decodeHeader, encodeDev, encodeRequest } from '../../src/dm/ioctl';
import { AbortError, DmIoctlError, SetupError } from '../../src/errors';
import { native } from '../../src/native/binding';
import { statusResults } from './helpers/kernel-replies';

/** A poller whose readiness the test triggers; it logs every call. */
function fakePoller(o: { armError?: Error } = {}) {
  const log: string[] = [];
  let wake: ((v: boolean) => void) | undefined;
  let closed = false;
  const poller: DmEventPoller = {
    arm: () => {
      log.push('arm');
      if (o.armError) throw o.armError;
    },
    readable: () => {
      log.push('readable');
      if (closed) return Promise.resolve(false);
      return new Promise<boolean>((r) => (wake = r));
    },
    close: () => {
      if (closed) return;
      log.push('close');
      closed = true;
      wake?.(false);
    },
  };
  return {
    poller,
    log,
    /** Some dm device had an event. */
    fire: () => {
      const w = wake;
      wake = undefined;
      w?.(true);
    },
    pending: () => wake !== undefined,
    get closed() {
      return closed;
    },
  };
}

const tick = () => new Promise<void>((r) => setImmediate(r));
async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await tick();
  if (!cond()) throw new Error('condition never held');
}

function errno(code: string, n: number): Error {
  return Object.assign(new Error(`${code}: x, ioctl`), { code, errno: -n, syscall: 'ioctl' });
}

describe('waitForEventChange', () => {
  test('counter already moved: returns after one arm and one read, no wait', async () => {
    const f = fakePoller();
    await waitForEventChange(() => f.poller, async () => (f.log.push('read'), 8), 7);
    expect(f.log).toEqual(['arm', 'read', 'close']);
  });

  test('arm, read, wait; a wakeup for another device re-arms and waits again; the next one returns', async () => {
    const f = fakePoller();
    let counter = 7;
    let done = false;
    const p = waitForEventChange(() => f.poller, async () => (f.log.push(`read ${counter}`), counter), 7).then(() => (done = true));
    await until(f.pending);
    f.fire(); // another device: our counter unchanged
    await until(() => f.log.filter((l) => l === 'readable').length === 2 && f.pending());
    expect(done).toBe(false);
    counter = 8;
    f.fire();
    await p;
    expect(f.log).toEqual(['arm', 'read 7', 'readable', 'arm', 'read 7', 'readable', 'arm', 'read 8', 'close']);
  });

  test('abort during a wait: AbortError (ABORT_ERR) with the reason as cause, at once; the poller is closed', async () => {
    const f = fakePoller();
    const ac = new AbortController();
    const p = waitForEventChange(() => f.poller, async () => 7, 7, { signal: ac.signal });
    await until(f.pending);
    const reason = new Error('user gave up');
    ac.abort(reason);
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AbortError);
    expect(err).toMatchObject({ code: 'ABORT_ERR', name: 'AbortError', cause: reason });
    expect(f.closed).toBe(true);
  });

  test('already aborted: rejects without opening a poller', async () => {
    let opened = 0;
    const err = await waitForEventChange(
      () => (opened++, fakePoller().poller),
      async () => 7,
      7,
      { signal: AbortSignal.abort() },
    ).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ABORT_ERR' });
    expect(opened).toBe(0);
  });

  test('no DM_DEV_ARM_POLL (ENOTTY, or EINVAL for an older interface): the counter is read on a timer instead', async () => {
    for (const code of [errno('ENOTTY', 25), errno('EINVAL', 22)]) {
      const f = fakePoller({ armError: code });
      let reads = 0;
      const t0 = Date.now();
      await waitForEventChange(() => f.poller, async () => (++reads < 4 ? 7 : 9), 7, { fallbackIntervalMs: 20 });
      expect(reads).toBe(4);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(3 * 20 - 5);
      expect(f.log).toEqual(['arm', 'close']); // closed at once, never waited on
    }
    // And an abort ends the timer wait.
    const f = fakePoller({ armError: errno('ENOTTY', 25) });
    const ac = new AbortController();
    const p = waitForEventChange(() => f.poller, async () => 7, 7, { fallbackIntervalMs: 60_000, signal: ac.signal });
    setTimeout(() => ac.abort(), 20);
    const t0 = Date.now();
    await expect(p).rejects.toMatchObject({ code: 'ABORT_ERR' });
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  test('other arm errors and counter read errors reject; the poller is closed', async () => {
    const f = fakePoller({ armError: errno('EACCES', 13) });
    await expect(waitForEventChange(() => f.poller, async () => 7, 7)).rejects.toMatchObject({ code: 'EACCES' });
    expect(f.closed).toBe(true);
    const g = fakePoller();
    let n = 0;
    const p = waitForEventChange(
      () => g.poller,
      async () => {
        if (n++) throw errno('ENXIO', 6); // removed after the first read
        return 7;
      },
      7,
    );
    await until(g.pending);
    g.fire();
    await expect(p).rejects.toMatchObject({ code: 'ENXIO' });
    expect(g.closed).toBe(true);
  });
});

describe('DeviceMapper.wait', () => {
  function fakeDm(counter: { value: number }) {
    const f = fakePoller();
    const sent: number[] = [];
    const line = '0 10/100 20/200 - rw discard_passdown queue_if_no_space - 25 ';
    const dm = new DeviceMapper({
      nodes: 'never',
      eventPoller: () => f.poller,
      transport: async (cmd, req) => {
        sent.push(cmd);
        const h = decodeHeader(req);
        const results = cmd === Cmd.TABLE_STATUS ? statusResults([{ start: 0, length: 1024, type: 'thin-pool', params: line }]) : undefined;
        const b = encodeRequest({ version: [4, 47, 0], name: h.name, eventNr: counter.value, targetCount: results ? 1 : 0, dev: encodeDev({ major: 253, minor: 1 }) }, results);
        b.writeUInt32LE(results ? IOCTL.size + results.length : IOCTL.data, IOCTL.data_size);
        return b;
      },
    });
    return { dm, f, sent, line };
  }

  test('returns the status lines and the counter they go with after the event; DEV_STATUS to check, TABLE_STATUS once', async () => {
    const counter = { value: 3 };
    const { dm, f, sent, line } = fakeDm(counter);
    const p = dm.wait('pool', 3);
    await until(f.pending);
    counter.value = 4;
    f.fire();
    const r = await p;
    expect(r.info.eventNr).toBe(4);
    expect(r.targets).toEqual([{ start: 0, length: 1024, type: 'thin-pool', params: line }]);
    expect(sent).toEqual([Cmd.DEV_STATUS, Cmd.DEV_STATUS, Cmd.TABLE_STATUS]);
    expect(f.closed).toBe(true);
  });

  test('aborted: AbortError, no status read after it', async () => {
    const { dm, f, sent } = fakeDm({ value: 3 });
    const ac = new AbortController();
    const p = dm.wait('pool', 3, { signal: ac.signal });
    await until(f.pending);
    ac.abort();
    await expect(p).rejects.toMatchObject({ code: 'ABORT_ERR' });
    expect(sent).toEqual([Cmd.DEV_STATUS]);
  });

  test('arm and open failures: the kernel refusing DM_DEV_ARM_POLL for want of privilege, the control node missing (SetupError)', async () => {
    const arm = new DeviceMapper({ nodes: 'never', eventPoller: () => fakePoller({ armError: errno('EACCES', 13) }).poller, transport: async () => Buffer.alloc(0) });
    const e1 = await arm.wait('pool', 0).catch((e: unknown) => e);
    expect(e1).toBeInstanceOf(SetupError);
    expect(e1).toMatchObject({ kind: 'needs-root', code: 'EACCES', ioctl: 'DM_DEV_ARM_POLL', device: 'pool' });
    const busy = new DeviceMapper({ nodes: 'never', eventPoller: () => fakePoller({ armError: errno('EBUSY', 16) }).poller, transport: async () => Buffer.alloc(0) });
    const e2 = await busy.wait('pool', 0).catch((e: unknown) => e);
    expect(e2).toBeInstanceOf(DmIoctlError);
    expect(e2).toMatchObject({ code: 'EBUSY', ioctl: 'DM_DEV_ARM_POLL', device: 'pool' });
    const open = new DeviceMapper({
      nodes: 'never',
      eventPoller: () => {
        throw Object.assign(new Error('ENOENT: no such file, open'), { code: 'ENOENT', errno: -2, syscall: 'open', path: '/dev/mapper/control' });
      },
      transport: async () => Buffer.alloc(0),
    });
    const e3 = await open.wait('pool', 0).catch((e: unknown) => e);
    expect(e3).toBeInstanceOf(SetupError);
    expect(e3).toMatchObject({ kind: 'no-device-mapper', code: 'ENOENT', syscall: 'open', path: '/dev/mapper/control', device: 'pool' });
    expect((e3 as { ioctl?: string }).ioctl).toBeUndefined();
    await expect(open.wait('pool', -1)).rejects.toMatchObject({ code: 'EINVAL' });
  });
});

describe('native DmPoll (on a FIFO: the same uv_poll path as the control node)', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'dmthin-poll-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const fifo = (name: string) => {
    const p = join(dir, name);
    execFileSync('mkfifo', [p]);
    return p;
  };

  test('readable() resolves true when data arrives; close() ends a pending wait with false at once; arm() on a non-dm fd is ENOTTY', async () => {
    const path = fifo('a');
    const p = new (native().DmPoll)();
    p.open(path);
    expect(() => p.arm()).toThrow(expect.objectContaining({ code: 'ENOTTY', ioctl: 'DM_DEV_ARM_POLL' }));
    let settled: boolean | undefined;
    const w = p.readable().then((v) => (settled = v));
    await new Promise((r) => setTimeout(r, 50));
    expect(settled).toBeUndefined();
    await writeFile(path, 'x'); // another opener writes into the FIFO
    expect(await w).toBe(true);
    const second = p.readable();
    expect(() => p.readable()).toThrow(/already pending/);
    p.close();
    p.close();
    expect(await second).toBe(false);
    expect(await p.readable()).toBe(false); // after close: false, no error

    const q = new (native().DmPoll)();
    q.open(fifo('b'));
    const t0 = Date.now();
    const pending = q.readable();
    setTimeout(() => q.close(), 20);
    expect(await pending).toBe(false);
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  test('a worker thread ending with polls open and waits pending: no crash (no close callback left pointing into the addon)', () => {
    const path = fifo('worker');
    const addon = join(__dirname, '..', '..', 'build', 'Release', 'dmthin.node');
    const inWorker = `
      const a = require(${JSON.stringify(addon)});
      const ps = [1, 2, 3].map(() => { const p = new a.DmPoll(); p.open(${JSON.stringify(path)}); return p; });
      ps[0].readable(); ps[1].readable(); ps[1].close();
      require('worker_threads').parentPort.postMessage('waiting');`;
    // The addon is loaded in the workers only, so it is unloaded with each of them.
    const main = `
      const { Worker } = require('worker_threads');
      (async () => {
        for (let i = 0; i < 5; i++) {
          const w = new Worker(${JSON.stringify(inWorker)}, { eval: true });
          await new Promise((r) => w.once('message', r));
          await w.terminate();
        }
        console.log('survived');
      })();`;
    const r = spawnSync(process.execPath, ['-e', main], { encoding: 'utf8', timeout: 60_000 });
    expect({ status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr }).toEqual({ status: 0, signal: null, stdout: 'survived\n', stderr: '' });
  });

  test('open errors are Node-shaped', () => {
    const p = new (native().DmPoll)();
    expect(() => p.open(join(dir, 'absent'))).toThrow(expect.objectContaining({ code: 'ENOENT', syscall: 'open' }));
  });

  test('eight pending waits hold no libuv worker thread: thread-pool file reads still complete', async () => {
    const polls = Array.from({ length: 8 }, (_, i) => {
      const p = new (native().DmPoll)();
      p.open(fifo(`w${i}`));
      return p;
    });
    const waits = polls.map((p) => p.readable());
    try {
      // fs.readFile runs on the libuv pool (4 threads by default): with eight
      // blocked workers it would never finish.
      const reads = Promise.all(Array.from({ length: 16 }, () => readFile(__filename)));
      let timer: NodeJS.Timeout | undefined;
      const r = await Promise.race([reads, new Promise((res) => (timer = setTimeout(() => res('timeout'), 10_000)))]);
      clearTimeout(timer);
      expect(r).not.toBe('timeout');
    } finally {
      for (const p of polls) p.close();
    }
    expect(await Promise.all(waits)).toEqual(Array(8).fill(false));
  });
});
