/**
 * The file output's _writev (src/output/file.ts FileWritable: send -o FILE
 * and every command's -o FILE): writes buffered behind a pending one, or
 * corked, go out together, empty ones among them, short writes continued.
 */
import { readFileSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { OutputFile } from '../../src/output/file';
import { scratch } from '../stream/helpers';

const put = (s: Writable, c: string | Buffer): Promise<void> => new Promise((res, rej) => s.write(c, (e) => (e ? rej(e) : res())));

test('empty writes buffered behind a pending write do not fail the file (outside review of 5fc0595: EIO "made no progress")', async () => {
  const s = scratch();
  try {
    const f = await OutputFile.create(join(s.dir, 'out'));
    const results = await Promise.allSettled([put(f.stream, 'abc'), put(f.stream, ''), put(f.stream, '')]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled']);
    await f.commit();
    expect(readFileSync(join(s.dir, 'out'), 'utf8')).toBe('abc');
  } finally {
    s.cleanup();
  }
});

test('corked writes are continued after short writes (writev made to take at most 7 bytes a call), every byte in order', async () => {
  const s = scratch();
  try {
    const f = await OutputFile.create(join(s.dir, 'out'));
    const stream = f.stream as Writable & { fh: FileHandle };
    const real = stream.fh.writev.bind(stream.fh);
    let calls = 0;
    (stream.fh as unknown as { writev: (b: Buffer[]) => Promise<{ bytesWritten: number }> }).writev = async (bufs: Buffer[]) => {
      calls++;
      const out: Buffer[] = [];
      let left = 7;
      for (const b of bufs) {
        if (left === 0) break;
        out.push(b.subarray(0, Math.min(left, b.length)));
        left -= Math.min(left, b.length);
      }
      return real(out);
    };
    const parts = [Buffer.from('hello '), Buffer.alloc(0), Buffer.from('world, '), Buffer.alloc(20, 0x78), Buffer.from('!')];
    stream.cork();
    const done = parts.map((p) => put(stream, p));
    stream.uncork();
    await Promise.all(done);
    await f.commit();
    expect(readFileSync(join(s.dir, 'out')).equals(Buffer.concat(parts))).toBe(true);
    expect(calls).toBe(Math.ceil(34 / 7));
  } finally {
    s.cleanup();
  }
});
