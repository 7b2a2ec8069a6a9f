/**
 * pipeChunks (src/stream/receive/pipe-chunks.ts): a FIFO read in chunks of
 * two reused buffers. The bytes must come out whole and in order whatever
 * the writer's pace and the reader's (the socket pauses while both buffers
 * are taken), an abort must end a wait on a writer that sends nothing, and
 * openPipe() takes FIFOs only.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, constants, existsSync, fstatSync, openSync, writeFileSync } from 'node:fs';
import { AbortError } from '../../src/errors';
import { openPipe, pipeChunks } from '../../src/stream/receive/pipe-chunks';
import { scratch, type Scratch } from './helpers';

let s: Scratch;
beforeAll(() => {
  s = scratch();
});
afterAll(() => s.cleanup());

let n = 0;
/** A FIFO whose read end is open (non-blocking open, as openPipe does) and a child writing `file` into it with `pace` ms sleeps between 100 KiB pieces. */
function fifoWith(file: string, pace: number): { fd: number; writer: ChildProcess } {
  const path = s.path(`fifo${n++}`);
  expect(spawnSync('mkfifo', [path]).status).toBe(0);
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  const script = `const fs=require('fs');const b=fs.readFileSync(process.argv[1]);const out=fs.openSync(process.argv[2],'w');
    (async()=>{for(let o=0;o<b.length;o+=100000){fs.writeSync(out,b.subarray(o,Math.min(b.length,o+100000)));if(${pace})await new Promise(r=>setTimeout(r,${pace}));}fs.closeSync(out);})();`;
  const writer = spawn(process.execPath, ['-e', script, file, path], { stdio: 'ignore' });
  return { fd, writer };
}

/** Resolves once the child has exited (also if it already has). */
function exited(c: ChildProcess): Promise<unknown> {
  return c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : new Promise((r) => c.once('exit', r));
}

async function drain(fd: number, opts: { chunkBytes?: number; slow?: boolean; signal?: AbortSignal } = {}): Promise<{ sha: string; bytes: number; chunks: number }> {
  const h = createHash('sha256');
  let bytes = 0;
  let chunks = 0;
  for await (const c of pipeChunks(fd, { chunkBytes: opts.chunkBytes, signal: opts.signal })) {
    // A slow reader: the chunk must stay intact while the writer goes on.
    const copy = Buffer.from(c);
    if (opts.slow && chunks % 3 === 0) await new Promise((r) => setTimeout(r, 20));
    expect(c.equals(copy)).toBe(true);
    h.update(c);
    bytes += c.length;
    chunks++;
  }
  return { sha: h.digest('hex'), bytes, chunks };
}

test.each([
  ['a fast writer, a slow reader (the socket pauses and resumes)', 0, true],
  ['a slow writer, a fast reader (partial chunks never handed out early)', 3, false],
  ['both fast', 0, false],
])('%s: every byte, in order', async (_name, pace, slow) => {
  const data = randomBytes(5 * 1024 * 1024 + 12345);
  const file = s.path(`data${n++}`);
  writeFileSync(file, data);
  const { fd, writer } = fifoWith(file, pace as number);
  const got = await drain(fd, { chunkBytes: 512 << 10, slow: slow as boolean });
  expect(got.bytes).toBe(data.length);
  expect(got.sha).toBe(createHash('sha256').update(data).digest('hex'));
  // Chunks are close to full: about size / 512 KiB of them, not one per pipe read.
  expect(got.chunks).toBeLessThanOrEqual(Math.ceil(data.length / (256 << 10)) + 1);
  await exited(writer);
});

test('an empty pipe: no chunk; the descriptor is closed at the end', async () => {
  const file = s.path('empty');
  writeFileSync(file, '');
  const { fd, writer } = fifoWith(file, 0);
  await exited(writer);
  expect(await drain(fd)).toMatchObject({ bytes: 0, chunks: 0 });
  expect(() => fstatSync(fd)).toThrow(/EBADF/);
});

test('an abort ends a wait on a writer that sends nothing: AbortError at once, descriptor closed', async () => {
  const path = s.path('stalled');
  expect(spawnSync('mkfifo', [path]).status).toBe(0);
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  const writerFd = openSync(path, constants.O_WRONLY); // a writer that never writes
  try {
    const ac = new AbortController();
    const t0 = Date.now();
    setTimeout(() => ac.abort(), 200);
    await expect(drain(fd, { signal: ac.signal })).rejects.toBeInstanceOf(AbortError);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(() => fstatSync(fd)).toThrow(/EBADF/);
  } finally {
    closeSync(writerFd);
  }
});

test('openPipe: a new descriptor for a FIFO; null for a regular file, /dev/null or a bad descriptor', () => {
  const path = s.path('fifo-open');
  expect(spawnSync('mkfifo', [path]).status).toBe(0);
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  const again = openPipe(fd);
  expect(again).not.toBeNull();
  expect(again).not.toBe(fd);
  expect(fstatSync(again!).isFIFO()).toBe(true);
  closeSync(again!);
  closeSync(fd);
  const file = s.path('plain');
  writeFileSync(file, 'x');
  const ffd = openSync(file, 'r');
  expect(openPipe(ffd)).toBeNull();
  closeSync(ffd);
  expect(existsSync('/dev/null')).toBe(true);
  const nfd = openSync('/dev/null', 'r');
  expect(openPipe(nfd)).toBeNull();
  closeSync(nfd);
  expect(openPipe(987654)).toBeNull();
});
