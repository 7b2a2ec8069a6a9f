/**
 * The addon's RangeReader (native/range_reader.cc, native/range_ring.cc):
 * byte ranges of a file read into a caller's buffer, through an io_uring
 * polled on the event loop where the kernel offers one, else through
 * libuv's thread pool (`ioUring: false` forces that path). Both paths must
 * give the file's bytes and the same errors; the ring's reads start no
 * thread; an environment torn down with ring reads in flight waits for them.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/native/binding';

const ADDON = join(__dirname, '..', '..', 'build', 'Release', 'dmthin.node');
const MiB = 1 << 20;

let dir: string;
let file: string;
let bytes: Buffer;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'dmthin-range-reader-'));
  file = join(dir, 'data.bin');
  bytes = randomBytes(12 * MiB + 3 * 4096);
  writeFileSync(file, bytes);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** io_uring is there to be had: not turned off by the kernel.io_uring_disabled sysctl (6.6+). */
const uringDisabled = existsSync('/proc/sys/kernel/io_uring_disabled') && readFileSync('/proc/sys/kernel/io_uring_disabled', 'utf8').trim() !== '0';
if (uringDisabled) console.warn('SKIPPED in test/unit/range-reader.test.ts: the ring-only checks (kernel.io_uring_disabled is set here)');

type Triple = [at: number, offset: number, length: number];
/** alignedBuffer's Uint8Array as a Buffer over the same memory. */
const asBuffer = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.length);
const flat = (ranges: Triple[]) => new Float64Array(ranges.flat());

async function readBoth(ranges: Triple[], bufBytes: number): Promise<{ ring: Buffer; pool: Buffer }> {
  const out: Buffer[] = [];
  for (const ioUring of [true, false]) {
    const r = new (native().RangeReader)({ ioUring });
    const info = await r.open(file);
    expect(info.size).toBe(bytes.length);
    const buf = asBuffer(native().alignedBuffer(bufBytes));
    await r.readInto(buf, flat(ranges));
    r.close();
    out.push(Buffer.from(buf));
  }
  return { ring: out[0], pool: out[1] };
}

test('ranges read through the ring and through the thread pool are the file\'s bytes: many 1 MiB pieces (more than the ring holds at once), short and unaligned-to-1 MiB lengths, several triples', async () => {
  const ranges: Triple[] = [
    [0, 4096, 10 * MiB + 8192], // 11 pieces: more than the 8 in flight
    [10 * MiB + 8192, 0, 4096],
    [10 * MiB + 12288, 12 * MiB, 3 * 4096], // the file's last bytes
  ];
  const total = 10 * MiB + 12288 + 3 * 4096;
  const { ring, pool } = await readBoth(ranges, total);
  const want = Buffer.concat([bytes.subarray(4096, 4096 + 10 * MiB + 8192), bytes.subarray(0, 4096), bytes.subarray(12 * MiB, 12 * MiB + 3 * 4096)]);
  expect(ring.subarray(0, total).equals(want)).toBe(true);
  expect(pool.subarray(0, total).equals(want)).toBe(true);
});

test('several reads in flight on one reader each get their own bytes', async () => {
  const r = new (native().RangeReader)();
  await r.open(file);
  const bufs = [0, 1, 2, 3].map(() => asBuffer(native().alignedBuffer(3 * MiB)));
  await Promise.all(bufs.map((b, i) => r.readInto(b, flat([[0, i * 2 * MiB, 3 * MiB]]))));
  r.close();
  bufs.forEach((b, i) => expect(b.equals(bytes.subarray(i * 2 * MiB, i * 2 * MiB + 3 * MiB))).toBe(true));
});

test('a range past the end of the file fails alike on both paths: EIO, pread, the path and the offset where the file ended', async () => {
  const errs: unknown[] = [];
  for (const ioUring of [true, false]) {
    const r = new (native().RangeReader)({ ioUring });
    await r.open(file);
    const buf = asBuffer(native().alignedBuffer(2 * MiB));
    errs.push(await r.readInto(buf, flat([[0, 12 * MiB, 2 * MiB]])).then(() => 'no error', (e: unknown) => e));
    r.close();
  }
  expect(errs[0]).toMatchObject({ code: 'EIO', syscall: 'pread', path: file, offset: bytes.length });
  const pick = (e: unknown) => {
    const x = e as { code: string; syscall: string; path: string; offset: number; message: string };
    return { code: x.code, syscall: x.syscall, path: x.path, offset: x.offset, message: x.message };
  };
  expect(pick(errs[0])).toEqual(pick(errs[1]));
});

test('a kernel\'s own EIO (an unmapped page of /proc/self/mem) is reported alike on both paths, without the short-read words of a file that ended', async () => {
  const errs: { code: string; errno: number; syscall: string; offset: number; message: string }[] = [];
  for (const ioUring of [true, false]) {
    const r = new (native().RangeReader)({ ioUring });
    await r.open('/proc/self/mem', 'never');
    const e = await r.readInto(Buffer.alloc(4096), flat([[0, 4096, 4096]])).then(() => undefined, (x: unknown) => x as (typeof errs)[number]);
    r.close();
    if (e === undefined) throw new Error('page 1 of /proc/self/mem was readable');
    errs.push({ code: e.code, errno: e.errno, syscall: e.syscall, offset: e.offset, message: e.message });
  }
  expect(errs[0]).toEqual(errs[1]);
  expect(errs[0]).toMatchObject({ code: 'EIO', syscall: 'pread', offset: 4096 });
  expect(errs[0].message).not.toMatch(/short read/);
});

test('a reader closed during a read keeps its descriptor until the read is done; a read after close is EBADF', async () => {
  const r = new (native().RangeReader)();
  await r.open(file);
  const buf = asBuffer(native().alignedBuffer(8 * MiB));
  const p = r.readInto(buf, flat([[0, 0, 8 * MiB]]));
  r.close();
  await p;
  expect(buf.equals(bytes.subarray(0, 8 * MiB))).toBe(true);
  expect(() => r.readInto(buf, flat([[0, 0, 4096]]))).toThrow(expect.objectContaining({ code: 'EBADF' }));
});

/** Runs `code` in a child (the addon as ADDON, the file as FILE); its stdout parsed as JSON. */
function child(code: string): { status: number | null; out: unknown; stderr: string } {
  const r = spawnSync(process.execPath, ['-e', `const ADDON = ${JSON.stringify(ADDON)}; const FILE = ${JSON.stringify(file)};\n${code}`], { encoding: 'utf8', timeout: 60_000 });
  let out: unknown;
  try {
    out = JSON.parse(r.stdout);
  } catch {
    out = r.stdout;
  }
  return { status: r.status, out, stderr: r.stderr };
}

// The process's threads but the kernel's io_uring workers (iou-wrk-*, iou-sqp-*): a read the
// kernel cannot complete at once is handed to such a worker, started and ended on the kernel's
// schedule; what these tests count is the threads the addon or libuv start.
const threads = `const threads = () => require('node:fs').readdirSync('/proc/self/task').filter((t) => { try { return !require('node:fs').readFileSync('/proc/self/task/' + t + '/comm', 'utf8').startsWith('iou-'); } catch { return false; } }).length;`;

(uringDisabled ? test.skip : test)('open and a ring read start no thread (libuv\'s pool starts four for the thread-pool path), and the read goes through an io_uring descriptor', () => {
  const r = child(`${threads}
    const a = require(ADDON);
    const uring = () => require('node:fs').readdirSync('/proc/self/fd').filter((fd) => { try { return require('node:fs').readlinkSync('/proc/self/fd/' + fd).includes('io_uring'); } catch { return false; } }).length;
    (async () => {
      const before = threads();
      const ring = new a.RangeReader();
      await ring.open(FILE);
      const afterOpen = threads();
      const buf = a.alignedBuffer(1 << 20);
      await ring.readInto(buf, new Float64Array([0, 0, 1 << 20]));
      const afterRing = threads();
      const rings = uring();
      const pool = new a.RangeReader({ ioUring: false });
      await pool.open(FILE);
      await pool.readInto(buf, new Float64Array([0, 0, 1 << 20]));
      process.stdout.write(JSON.stringify({ open: afterOpen - before, ring: afterRing - before, rings, pool: threads() - afterRing }));
    })();`);
  expect(r.stderr).toBe('');
  expect(r.out).toEqual({ open: 0, ring: 0, rings: 1, pool: 4 });
});

(uringDisabled ? test.skip : test)('a reader opened again reads through a ring again, and an O_DIRECT read refused with EINVAL (an unaligned buffer) leaves it on its ring', () => {
  const r = child(`${threads}
    const a = require(ADDON);
    (async () => {
      const rr = new a.RangeReader();
      await rr.open(FILE, 'always');
      await rr.readInto(a.alignedBuffer(1 << 20), new Float64Array([0, 0, 1 << 20]));
      rr.close();
      const before = threads();
      await rr.open(FILE, 'always');
      await rr.readInto(a.alignedBuffer(1 << 20), new Float64Array([0, 0, 1 << 20]));
      const reopened = threads() - before;
      const plain = Buffer.alloc((1 << 20) + 1).subarray(1);
      const err = await rr.readInto(plain, new Float64Array([0, 0, 4096])).then(() => 'none', (e) => e.code + ' ' + e.syscall);
      await rr.readInto(a.alignedBuffer(1 << 20), new Float64Array([0, 0, 1 << 20]));
      process.stdout.write(JSON.stringify({ reopened, err, afterEinval: threads() - before }));
    })();`);
  expect(r.stderr).toBe('');
  expect(r.out).toEqual({ reopened: 0, err: 'EINVAL pread', afterEinval: 0 });
});

test('workers that call process.exit() with reads in flight (ring and thread pool) end without taking the process down (node-addon-api could not throw into a closing environment: exit 134)', () => {
  const r = child(`
    const { Worker } = require('node:worker_threads');
    (async () => {
      for (const ioUring of [true, false])
        for (let i = 0; i < 12; i++) {
          const w = new Worker(\`
            const a = require(\${JSON.stringify(ADDON)});
            (async () => {
              const rr = new a.RangeReader({ ioUring: \${ioUring} });
              await rr.open(\${JSON.stringify(FILE)}, 'always');
              for (let n = 0; ; n++) {
                const ps = [];
                for (let k = 0; k < 3; k++) ps.push(rr.readInto(a.alignedBuffer(8 << 20), new Float64Array([0, 0, 4 << 20, 4 << 20, 5 << 20, 4 << 20])));
                if (n === \${i % 3}) process.exit(3);
                await Promise.all(ps);
              }
            })();\`, { eval: true });
          const code = await new Promise((res) => w.once('exit', res));
          if (code !== 3) throw new Error('worker exit ' + code);
        }
      process.stdout.write(JSON.stringify({ done: true }));
    })();`);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  expect(r.out).toEqual({ done: true });
});

test('a worker ended with reads in flight (its environment torn down) waits for them and ends cleanly; the process goes on', () => {
  const r = child(`
    const { Worker } = require('node:worker_threads');
    const w = new Worker(\`
      const { parentPort } = require('node:worker_threads');
      const a = require(\${JSON.stringify(ADDON)});
      (async () => {
        const rr = new a.RangeReader();
        await rr.open(\${JSON.stringify(FILE)});
        for (let i = 0; i < 4; i++) rr.readInto(a.alignedBuffer(12 << 20), new Float64Array([0, 0, 12 << 20])).catch(() => {});
        parentPort.postMessage('reading');
      })();\`, { eval: true });
    w.once('message', () => w.terminate().then((code) => {
      // The process's own reads still work after it.
      const a = require(ADDON);
      const rr = new a.RangeReader();
      rr.open(FILE).then(() => rr.readInto(a.alignedBuffer(4096), new Float64Array([0, 0, 4096]))).then(() => process.stdout.write(JSON.stringify({ terminated: code })));
    }));`);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  expect(r.out).toEqual({ terminated: 1 });
});
