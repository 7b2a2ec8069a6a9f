/**
 * `dmthin send` whose reader goes away mid-stream (`| head -c N`), with the
 * addon's hashing thread and reads still in flight when the process ends.
 * The thread once outlived the environment and hashed a send buffer that the
 * teardown had already freed: SIGSEGV (exit 139) in about half the runs. The
 * documented status for a reader that went away is 141 with nothing on
 * stderr (README: EPIPE); never 0 (the stream is incomplete), never a signal.
 */
import { spawn } from 'node:child_process';
import { truncateSync, writeFileSync } from 'node:fs';
import { CLI } from '../cli/run-cli';
import { fixtureImage } from '../helpers/fixtures';
import { scratch, type Scratch } from './helpers';

// deep-tree's device 1: 40,003 mapped 64 KiB blocks (a 2.4 GiB stream), read
// from a sparse device image: enough that reads and hashing are under way
// when the reader goes.
const BS = 65536;
const SIZE = 44674 * BS;
let s: Scratch;
let meta: string;
let dev: string;

beforeAll(() => {
  s = scratch();
  meta = s.path('meta.bin');
  dev = s.path('dev.img');
  writeFileSync(meta, fixtureImage('deep-tree'));
  writeFileSync(dev, '');
  truncateSync(dev, SIZE);
});
afterAll(() => s.cleanup());

/** Runs send into a reader that closes its end after `keep` bytes. */
function sendIntoClosingReader(keep: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; got: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'send', '--metadata', meta, '--device', dev, '--snap', '1', '-q'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let got = 0;
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdout.on('data', (d: Buffer) => {
      got += d.length;
      if (got >= keep) child.stdout.destroy();
    });
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, got, stderr }));
  });
}

test('a reader that closes after 100,000 bytes: exit 141 every time, no crash (16 runs, two at a time)', async () => {
  const results = [];
  for (let i = 0; i < 8; i++) results.push(...(await Promise.all([sendIntoClosingReader(100_000), sendIntoClosingReader(100_000)])));
  for (const r of results) {
    expect(r.got).toBeLessThan(SIZE); // the reader did go away before the end
    expect({ code: r.code, signal: r.signal, stderr: r.stderr }).toEqual({ code: 141, signal: null, stderr: '' });
  }
}, 120_000);

test('a PassThrough destroyed under a pending write (an in-process receiver that failed): the send fails with that error, it does not wait on a callback that never comes (outside hunt Q: replicate exited 0, or 139)', async () => {
  const { PassThrough } = await import('node:stream');
  const { writeRecords } = await import('../../src/stream/send/send-stream');
  const pipe = new PassThrough({ highWaterMark: 1024 });
  async function* gen(): AsyncGenerator<Buffer> {
    for (let i = 0; i < 100; i++) yield Buffer.alloc(4096);
  }
  setTimeout(() => pipe.destroy(new Error('the receiver failed')), 50);
  const t0 = Date.now();
  await expect(writeRecords(gen(), pipe)).rejects.toThrow('the receiver failed');
  expect(Date.now() - t0).toBeLessThan(2000);
  // Destroyed without an error: EPIPE.
  const closed = new PassThrough({ highWaterMark: 1024 });
  setTimeout(() => closed.destroy(), 50);
  await expect(writeRecords(gen(), closed)).rejects.toMatchObject({ code: 'EPIPE' });
});

test('an abort while a write is pending (an output that never calls it back) ends the send at once with AbortError, and the output is left without its listeners', async () => {
  const { Writable } = await import('node:stream');
  const { writeRecords } = await import('../../src/stream/send/send-stream');
  const held = new Writable({ write: () => undefined }); // never calls back
  const before = { close: held.listenerCount('close'), error: held.listenerCount('error') };
  async function* gen(): AsyncGenerator<Buffer[]> {
    for (let i = 0; i < 100; i++) yield [Buffer.alloc(40), Buffer.alloc(65536)];
  }
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 50);
  const t0 = Date.now();
  await expect(writeRecords(gen(), held, ac.signal)).rejects.toMatchObject({ name: 'AbortError' });
  expect(Date.now() - t0).toBeLessThan(2000);
  expect({ close: held.listenerCount('close'), error: held.listenerCount('error') }).toEqual(before);
});
