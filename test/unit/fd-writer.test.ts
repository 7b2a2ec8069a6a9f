/**
 * FdWriter (src/output/fd-writer.ts), the CLI's stdout: every byte in order
 * through a slow reader (blocking and non-blocking descriptors: EAGAIN is
 * waited out, not an error), 'drain' after the high-water mark, and the first
 * error kept for the failing write, every later one and flushed().
 */
import { spawnSync } from 'node:child_process';
import { closeSync, constants, openSync, readFileSync, readSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { FdWriter } from '../../src/output/fd-writer';
import { scratch } from '../stream/helpers';

/** A FIFO with a reader end (non-blocking) and a writer end, blocking or not. */
function fifo(nonBlockingWriter: boolean) {
  const s = scratch();
  const path = join(s.dir, 'fifo');
  expect(spawnSync('mkfifo', [path]).status).toBe(0);
  const r = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  const w = openSync(path, constants.O_WRONLY | (nonBlockingWriter ? constants.O_NONBLOCK : 0));
  return {
    r,
    w,
    close() {
      for (const fd of [r, w]) {
        try {
          closeSync(fd);
        } catch {
          // closed by the test already
        }
      }
      s.cleanup();
    },
  };
}

/** Reads the FIFO slowly (64 KiB every 2 ms) until `total` bytes came; their SHA-256. */
async function slowRead(fd: number, total: number): Promise<string> {
  const h = createHash('sha256');
  const buf = Buffer.alloc(1 << 16);
  let got = 0;
  while (got < total) {
    await new Promise((res) => setTimeout(res, 2));
    let n = 0;
    try {
      n = readSync(fd, buf, 0, buf.length, null);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
    }
    h.update(buf.subarray(0, n));
    got += n;
  }
  return h.digest('hex');
}

/** 3 MiB in writes of many sizes (strings, bytes, empty), and their SHA-256. */
function chunks(): { parts: (string | Uint8Array)[]; total: number; sha: string } {
  const parts: (string | Uint8Array)[] = [];
  const h = createHash('sha256');
  let total = 0;
  let seed = 7;
  for (let i = 0; total < 3 << 20; i++) {
    seed = (seed * 1103515245 + 12345) >>> 0;
    const n = seed % 200000;
    const p = i % 3 === 0 ? `line ${i} ${'é'.repeat(n % 97)}\n` : i % 7 === 0 ? new Uint8Array(0) : Buffer.alloc(n, i & 0xff);
    const bytes = typeof p === 'string' ? Buffer.from(p) : p;
    h.update(bytes);
    total += bytes.length;
    parts.push(p);
  }
  return { parts, total, sha: h.digest('hex') };
}

describe.each([
  ['blocking', false],
  ['non-blocking (EAGAIN)', true],
])('a %s pipe with a slow reader', (_name, nonBlocking) => {
  it('gets every byte in order; callbacks in order; drain after the high-water mark', async () => {
    const f = fifo(nonBlocking);
    try {
      const w = new FdWriter(f.w);
      const { parts, total, sha } = chunks();
      const reading = slowRead(f.r, total);
      const order: number[] = [];
      let drains = 0;
      let needed = 0;
      w.on('drain', () => drains++);
      for (let i = 0; i < parts.length; i++) {
        if (!w.write(parts[i], (e) => (expect(e).toBeUndefined(), order.push(i)))) needed++;
      }
      expect(needed).toBeGreaterThan(0);
      expect(w.writableNeedDrain).toBe(true);
      await w.flushed();
      expect(order).toEqual(parts.map((_p, i) => i));
      expect(drains).toBe(1);
      expect(w.writableNeedDrain).toBe(false);
      expect(await reading).toBe(sha);
    } finally {
      f.close();
    }
  }, 60_000);
});

it('/dev/full: ENOSPC for the write, every later one and flushed(); one error event', async () => {
  const fd = openSync('/dev/full', 'w');
  try {
    const w = new FdWriter(fd);
    const errors: Error[] = [];
    w.on('error', (e) => errors.push(e));
    const first = new Promise<Error | null | undefined>((res) => w.write('x'.repeat(5000), res));
    expect((await first)?.message).toMatch(/ENOSPC/);
    expect(w.destroyed).toBe(true);
    const later = new Promise<Error | null | undefined>((res) => w.write('y', res));
    expect((await later)?.message).toMatch(/ENOSPC/);
    await expect(w.flushed()).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(errors).toHaveLength(1);
  } finally {
    closeSync(fd);
  }
});

it('a pipe whose reader is gone: EPIPE, without an error listener (nothing thrown)', async () => {
  const f = fifo(false);
  closeSync(f.r);
  const w = new FdWriter(f.w);
  w.write('z'.repeat(100));
  try {
    await expect(w.flushed()).rejects.toMatchObject({ code: 'EPIPE' });
  } finally {
    f.close();
  }
});

it('flushed() with nothing written resolves at once', async () => {
  const fd = openSync('/dev/null', 'w');
  try {
    await new FdWriter(fd).flushed();
  } finally {
    closeSync(fd);
  }
});

/** fs requests in flight (handed to the thread pool) in this process. */
const fsRequests = () => process.getActiveResourcesInfo().filter((r) => r === 'FSReqCallback').length;

describe.each([
  ['a regular file', 'file'],
  ['/dev/null', '/dev/null'],
])('%s: written at once, without the thread pool', (_name, target) => {
  it('every byte in order, each callback in a later tick, no fs request in flight', async () => {
    const s = scratch();
    const path = target === 'file' ? join(s.dir, 'out') : target;
    const fd = openSync(path, 'w');
    try {
      const w = new FdWriter(fd);
      const { parts, sha } = chunks();
      const order: number[] = [];
      const errors: unknown[] = [];
      let inCall = false;
      let fromInside = 0;
      for (let i = 0; i < parts.length; i++) {
        const before = fsRequests();
        inCall = true;
        w.write(parts[i], (e) => {
          if (e) errors.push(e);
          if (inCall) fromInside++;
          order.push(i);
        });
        inCall = false;
        // fs.write's request would be listed here while a thread writes it.
        expect(fsRequests()).toBe(before);
      }
      await w.flushed();
      expect(errors).toEqual([]);
      expect(fromInside).toBe(0); // never called back from inside write()
      expect(order).toEqual(parts.map((_p, i) => i));
      if (target === 'file') expect(createHash('sha256').update(readFileSync(path)).digest('hex')).toBe(sha);
    } finally {
      closeSync(fd);
      s.cleanup();
    }
  });
});

it('cork(): the writes held go out as one writev(2) at uncork(), every byte in order, each callback in order; an empty write among them is called back too', async () => {
  const s = scratch();
  const path = join(s.dir, 'corked');
  const fd = openSync(path, 'w');
  const fs = require('node:fs') as typeof import('node:fs');
  const writev = jest.spyOn(fs, 'writevSync');
  const write = jest.spyOn(fs, 'writeSync');
  try {
    const w = new FdWriter(fd);
    const order: number[] = [];
    const parts = [Buffer.from('header '), new Uint8Array(0), Buffer.alloc(70000, 0x61), Buffer.from(' end')];
    w.cork();
    parts.forEach((p, i) => w.write(p, (e) => (expect(e).toBeUndefined(), order.push(i))));
    expect(writev).not.toHaveBeenCalled(); // held
    w.uncork();
    await w.flushed();
    expect(order).toEqual([0, 1, 2, 3]);
    expect(readFileSync(path).equals(Buffer.concat(parts))).toBe(true);
    // The header alone (an empty write ends a writev's gathering), then the rest in one.
    expect(writev.mock.calls.length + write.mock.calls.length).toBeLessThanOrEqual(2);
    expect(writev).toHaveBeenCalledTimes(1);
  } finally {
    writev.mockRestore();
    write.mockRestore();
    closeSync(fd);
    s.cleanup();
  }
});

it('cork() holds what is queued as a Writable does: a write in flight completes, the next waits for uncork(); flushed() waits for held writes too (outside review of 5fc0595)', async () => {
  const s = scratch();
  const path = join(s.dir, 'held');
  const fd = openSync(path, 'w');
  try {
    const w = new FdWriter(fd);
    w.write(Buffer.from('first ')); // written at once to a file; called back a tick later, busy until then
    w.cork();
    let secondDone = false;
    w.write(Buffer.from('second'), () => (secondDone = true));
    let flushed = false;
    const f = w.flushed().then(() => (flushed = true));
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setTimeout(r, 5));
    expect({ secondDone, flushed, file: readFileSync(path, 'utf8') }).toEqual({ secondDone: false, flushed: false, file: 'first ' });
    w.uncork();
    await f;
    expect({ secondDone, file: readFileSync(path, 'utf8') }).toEqual({ secondDone: true, file: 'first second' });
    // Corked while idle: flushed() does not resolve on the held write.
    w.cork();
    w.write(Buffer.from(' third'));
    let again = false;
    const g = w.flushed().then(() => (again = true));
    await new Promise((r) => setTimeout(r, 5));
    expect(again).toBe(false);
    w.uncork();
    await g;
    expect(readFileSync(path, 'utf8')).toBe('first second third');
  } finally {
    closeSync(fd);
    s.cleanup();
  }
});
