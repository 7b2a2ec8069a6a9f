import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { FdWriter } from '../../src/output/fd-writer';
import { HeldTail } from '../../src/output/held-tail';
import { asciiTag, OUTPUT_CHUNK_BYTES, OutputSink } from '../../src/output/sink';
import { scratch } from '../stream/helpers';

/** Collects what the sink writes. */
function collector(): { out: Writable; text: () => string } {
  const parts: Buffer[] = [];
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      parts.push(Buffer.from(chunk));
      cb();
    },
  });
  return { out, text: () => Buffer.concat(parts).toString('latin1') };
}

describe('OutputSink byte writers', () => {
  it('uint prints what String() prints, for every digit count up to 2^53 - 1', async () => {
    const { out, text } = collector();
    const s = new OutputSink(out, 'test');
    const values: number[] = [0, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40 - 1, 2 ** 53 - 1];
    for (let p = 1; p <= 1e15; p *= 10) values.push(p - 1, p, p + 1);
    let seed = 12345;
    for (let i = 0; i < 20000; i++) {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      values.push(Math.floor((seed / 2 ** 31) * 2 ** (1 + (i % 53))));
    }
    for (const v of values) {
      s.room(24);
      s.uint(v);
      s.tag(asciiTag('\n'));
      await s.maybeFlush();
    }
    await s.flush();
    expect(text()).toBe(values.map((v) => `${v}\n`).join(''));
  });

  it('tag and str interleave in order across chunk boundaries', async () => {
    const { out, text } = collector();
    const s = new OutputSink(out, 'test');
    const tag = asciiTag('<tag a="');
    let want = '';
    for (let i = 0; i < 50000; i++) {
      s.room(32);
      s.tag(tag);
      s.uint(i);
      s.str('"/>\n');
      want += `<tag a="${i}"/>\n`;
      await s.maybeFlush();
    }
    await s.flush();
    expect(text()).toBe(want);
  });

  it('tags of every length 1..40, then numbers, str or ascii: no byte of a tag\'s word stores survives past it', async () => {
    const { out, text } = collector();
    const s = new OutputSink(out, 'test');
    let want = '';
    let seed = 7;
    const next = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const tags = Array.from({ length: 40 }, (_, i) => 'abcdefghijklmnopqrstuvwxyz0123456789<>="'.slice(0, i + 1));
    const made = tags.map((t) => asciiTag(t));
    for (let i = 0; i < 60000; i++) {
      s.room(64);
      const k = next(40);
      s.tag(made[k]);
      want += tags[k];
      switch (next(4)) {
        case 0: {
          const v = next(10) < 3 ? next(10) : next(2 ** 31);
          s.uint(v);
          want += v;
          break;
        }
        case 1:
          s.ascii('|');
          want += '|';
          break;
        case 2:
          s.str('é');
          want += 'é';
          break;
        default:
          // tag after tag
          s.tag(made[0]);
          want += 'a';
      }
      await s.maybeFlush();
    }
    // Last write a tag whose length is not a multiple of four: its slack is not output.
    s.room(8);
    s.tag(made[4]);
    want += tags[4];
    await s.flush();
    expect(Buffer.from(text(), 'latin1').toString('utf8')).toBe(want);
  });
});

/** 40 chunks' worth of 100-byte lines of `c`, flushed as a formatter does (maybeFlush every 1,300 lines), then flushed. */
async function fortyChunks(s: OutputSink, c: string): Promise<{ line: string; lines: number }> {
  const line = c.repeat(99) + '\n';
  const lines = 40 * 2600;
  for (let i = 0; i < lines; i += 1300) {
    for (let j = 0; j < 1300; j++) s.ascii(line);
    await s.maybeFlush();
  }
  await s.flush();
  return { line, lines };
}

describe('chunks reused: at most two out before one comes back', () => {
  // A writer that writes a file at once calls back a tick later; a formatter whose
  // awaits all settle at once (ls's table) got a fresh 256 KiB chunk per flush
  // until FdWriter's 1 MiB high-water mark: each a fresh ~64 page faults.
  it.each([
    ['a regular file (written at once, called back a tick later)', false],
    ['a pipe (fs.write on the thread pool)', true],
  ])('%s: 40 chunks of text through three buffers, every byte in order', async (_name, pipe) => {
    const dir = scratch().dir;
    const path = join(dir, 'out');
    let fd: number;
    let reader: Promise<Buffer> | undefined;
    if (pipe) {
      const { spawn } = await import('node:child_process');
      const { spawnSync } = await import('node:child_process');
      expect(spawnSync('mkfifo', [join(dir, 'fifo')]).status).toBe(0);
      const cat = spawn('cat', [join(dir, 'fifo')], { stdio: ['ignore', 'pipe', 'inherit'] });
      const parts: Buffer[] = [];
      cat.stdout.on('data', (b: Buffer) => parts.push(b));
      reader = new Promise((resolve) => cat.on('close', () => resolve(Buffer.concat(parts))));
      fd = openSync(join(dir, 'fifo'), 'w');
    } else fd = openSync(path, 'w');
    const w = new FdWriter(fd);
    const buffers = new Set<ArrayBufferLike>();
    const write = w.write.bind(w);
    w.write = (chunk: string | Uint8Array, cb?: (e?: Error | null) => void) => {
      if (typeof chunk !== 'string') buffers.add(chunk.buffer);
      return write(chunk, cb);
    };
    const s = new OutputSink(w, 'test');
    const { line, lines } = await fortyChunks(s, 'x');
    closeSync(fd);
    const got = pipe ? await reader! : readFileSync(path);
    expect(got.length).toBe(lines * 100);
    expect(got.equals(Buffer.from(line.repeat(lines), 'latin1'))).toBe(true);
    expect(buffers.size).toBeLessThanOrEqual(3);
  });
});

describe('chunks from a source of the caller (ls: a huge-page mapping)', () => {
  it('every chunk comes from it, three for 40 chunks of text to a file, every byte in order', async () => {
    const path = join(scratch().dir, 'out');
    const fd = openSync(path, 'w');
    let made = 0;
    const s = new OutputSink(new FdWriter(fd), 'test', undefined, () => {
      made++;
      return Buffer.alloc(OUTPUT_CHUNK_BYTES, 0x21);
    });
    const { line, lines } = await fortyChunks(s, 'z');
    closeSync(fd);
    expect(readFileSync(path).equals(Buffer.from(line.repeat(lines), 'latin1'))).toBe(true);
    expect(made).toBeGreaterThanOrEqual(1);
    expect(made).toBeLessThanOrEqual(3);
  });

  it('a chunk of another length is refused (the reuse of chunks counts on their length)', () => {
    expect(() => new OutputSink(collector().out, 'test', undefined, () => Buffer.alloc(4096))).toThrow(new RangeError(`an output chunk is ${OUTPUT_CHUNK_BYTES} bytes, not 4096`));
  });
});

describe('HeldTail: the last chunk goes out only at release() (stdout of -m, whose check comes at the end)', () => {
  it('flushed: all but the last chunk written; released: every byte; unreleased, the output ends short', async () => {
    const path = join(scratch().dir, 'out');
    const fd = openSync(path, 'w');
    const t = new HeldTail(new FdWriter(fd));
    const s = new OutputSink(t, 'test');
    const line = 'y'.repeat(99) + '\n';
    const lines = 6000; // 600,000 bytes: three chunks of the sink's 256 KiB
    for (let i = 0; i < lines; i += 100) {
      for (let j = 0; j < 100; j++) s.ascii(line);
      await s.maybeFlush();
    }
    await s.flush();
    await new Promise((r) => setImmediate(r));
    const cut = readFileSync(path);
    expect(cut.length).toBeGreaterThan(0);
    expect(cut.length).toBeLessThan(lines * 100);
    expect(cut.equals(Buffer.from(line.repeat(lines)).subarray(0, cut.length))).toBe(true);
    await t.release();
    closeSync(fd);
    expect(readFileSync(path).equals(Buffer.from(line.repeat(lines)))).toBe(true);
  });

  it('a write error of the output reaches the sink (its flush rejects), and release() rejects with it', async () => {
    const fd = openSync('/dev/full', 'w');
    try {
      const t = new HeldTail(new FdWriter(fd));
      const s = new OutputSink(t, 'stdout');
      for (let i = 0; i < 3; i++) {
        s.ascii('z'.repeat(200_000));
        await s.maybeFlush().catch(() => undefined);
      }
      await expect(s.flush()).rejects.toMatchObject({ code: 'ENOSPC' });
      await expect(t.release()).rejects.toMatchObject({ code: 'ENOSPC' });
    } finally {
      closeSync(fd);
    }
  });
});

describe("an output whose write() throws (outside hunt V: the throw rejected a promise no one awaited, the process ended on an unhandled rejection, and the sink's user never settled)", () => {
  it('the next flush rejects with that error, and nothing is left unhandled', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      const out = new Writable({
        write() {
          throw new Error('write failed synchronously');
        },
      });
      const s = new OutputSink(out, 'the test output');
      const text = 'x'.repeat(100_000);
      const run = async () => {
        for (let i = 0; i < 10; i++) {
          s.ascii(text);
          await s.maybeFlush();
        }
        await s.flush();
      };
      await expect(run()).rejects.toThrow(/write failed synchronously/);
      await new Promise((r) => setImmediate(r));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});

describe('an output destroyed before everything is written (outside hunt V 6: a plain DmthinError EPIPE without syscall, or Node\'s ERR_STREAM_DESTROYED without errno, where the README promises a SystemCallError)', () => {
  const epipe = expect.objectContaining({ name: 'SystemCallError', code: 'EPIPE', errno: expect.any(Number), syscall: 'write', message: expect.stringMatching(/^cannot write the test output: .*; the output is incomplete$/) });
  it.each(['before the first write', 'while it is written'])('destroyed %s: SystemCallError EPIPE', async (when) => {
    let n = 0;
    const out = new Writable({
      highWaterMark: 1024,
      write(_c, _e, cb) {
        if (++n === 2) return this.destroy();
        setImmediate(cb);
      },
    });
    if (when === 'before the first write') out.destroy();
    const s = new OutputSink(out, 'the test output');
    const run = async () => {
      for (let i = 0; i < 20; i++) {
        s.ascii('y'.repeat(100_000));
        await s.maybeFlush();
      }
      await s.flush();
    };
    await expect(run()).rejects.toEqual(epipe);
  });
});
