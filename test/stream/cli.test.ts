/**
 * `dmthin send` / `dmthin receive` as a user runs them (the built CLI in a
 * child process): offline images, files and pipes, exit status 0/1 with one
 * line on stderr, and a SIGTERM in the middle of a piped receive.
 */
import { blake3 } from '@noble/hashes/blake3';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { CLI, hashOutput, runCli } from '../cli/run-cli';
import { ThinMetadata } from '../../src/thin/metadata';
import { fixtureImage } from '../helpers/fixtures';
import { expectedSha, patternBlock, scratch, sha256File, writeDataFile, type Scratch } from './helpers';

const BS = 65536;
const FIX = 'metadata-snap-diverged';
let s: Scratch;
let md: ThinMetadata;
let meta: string;
let data: string;

beforeAll(async () => {
  s = scratch();
  const image = fixtureImage(FIX);
  meta = s.path('meta.bin');
  data = s.path('data.bin');
  writeFileSync(meta, image);
  await writeDataFile(image, data, BS);
  md = await ThinMetadata.fromBuffer(image);
});
afterAll(async () => {
  await md.close();
  s.cleanup();
});

function sh(cmd: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const dmthin = `'${process.execPath}' '${CLI}'`;
const SIZE = 300 * BS;

test('send to a file, receive it; then an incremental through a pipe', async () => {
  const t = s.path('t1');
  const stream = s.path('full4.s');
  let r = runCli(['send', '--metadata', meta, '--data', data, '--snap', '4', '--size', `${SIZE / 1024}K`, '-o', stream, '-q']);
  expect([r.status, r.stderr]).toEqual([0, '']);
  r = runCli(['receive', '--target', t, '--input', stream, '--create', '--json', '-q']);
  expect(r.status).toBe(0);
  expect(JSON.parse(r.stdout)).toMatchObject({ header: { deviceSize: SIZE, target: { devId: 4, pool: expect.stringMatching(/^image-sha256:[0-9a-f]{64}$/) }, base: null }, spooled: false, created: true });
  expect(sha256File(t)).toBe(await expectedSha(md, 4, SIZE));
  // One shape whatever the stream (docs/json.md): a full stream has no base root, a version-3 stream no roots; both null, not absent (outside hunt).
  expect(JSON.parse(r.stdout).header).toMatchObject({ targetRoot: expect.stringMatching(/^[0-9a-f]{64}$/), baseRoot: null });
  const v3 = s.path('full4v3.s');
  expect(runCli(['send', '--metadata', meta, '--data', data, '--snap', '4', '--size', `${SIZE / 1024}K`, '-o', v3, '-q', '--format-version', '3']).status).toBe(0);
  r = runCli(['receive', '--target', s.path('t1v3'), '--input', v3, '--create', '--json', '-q']);
  expect(r.status).toBe(0);
  expect(JSON.parse(r.stdout).header).toMatchObject({ version: 3, targetRoot: null, baseRoot: null });

  const p = sh(`${dmthin} send --metadata '${meta}' --data '${data}' --snap 1 --base 4 --size ${SIZE} | ${dmthin} receive --target '${t}' --spool-dir '${s.dir}'`);
  expect([p.status, p.stderr]).toEqual([0, '']);
  expect(sha256File(t)).toBe(await expectedSha(md, 1, SIZE));
});

test('receive < FILE reads the file in place, as -i FILE does, not through the spool (outside hunt T: a small spool directory could not hold it)', async () => {
  const stream = s.path('stdin-full4.s');
  expect(runCli(['send', '--metadata', meta, '--data', data, '--snap', '4', '--size', `${SIZE / 1024}K`, '-o', stream, '-q']).status).toBe(0);
  const notDir = s.path('not-a-dir');
  writeFileSync(notDir, '');
  const t = s.path('t-stdin');
  // A spool directory that cannot exist: only a receive that does not spool succeeds.
  const p = sh(`${dmthin} receive --target '${t}' --create --spool-dir '${notDir}/spool' --json -q < '${stream}'`);
  expect([p.status, p.stderr]).toEqual([0, '']);
  expect(JSON.parse(p.stdout)).toMatchObject({ spooled: false, created: true });
  expect(sha256File(t)).toBe(await expectedSha(md, 4, SIZE));
  // Not at its start (the shell's reader took some first): read from where stdin is, through the spool.
  const q = sh(`{ head -c 1 >/dev/null; ${dmthin} receive --target '${s.path('t-stdin2')}' --create --spool-dir '${s.dir}' -q; } < '${stream}'`);
  expect(q.status).toBe(1);
  expect(q.stderr).toMatch(/^dmthin receive: .*\[/);
});

/**
 * The 4096 bytes of device `devId`'s mapping-tree root node, found by
 * walking the metadata file's top-level tree here (superblock offset 320:
 * data_mapping_root; node header 32 bytes: flags at 4 (1 internal, 2 leaf),
 * nr_entries at 16, max_entries at 20; u64 keys, then u64 values).
 */
function rootNodeOf(path: string, devId: number): Buffer {
  const file = readFileSync(path);
  const block = (n: bigint) => file.subarray(Number(n) * 4096, Number(n) * 4096 + 4096);
  let node = block(file.readBigUInt64LE(320));
  for (;;) {
    const flags = node.readUInt32LE(4);
    const nr = node.readUInt32LE(16);
    const max = node.readUInt32LE(20);
    let i = -1;
    for (let k = 0; k < nr && node.readBigUInt64LE(32 + 8 * k) <= BigInt(devId); k++) i = k;
    if (i < 0) throw new Error(`device ${devId} not in the top-level tree`);
    const value = node.readBigUInt64LE(32 + 8 * max + 8 * i);
    if (flags & 2) {
      if (node.readBigUInt64LE(32 + 8 * i) !== BigInt(devId)) throw new Error(`device ${devId} not in the top-level tree`);
      return block(value);
    }
    node = block(value);
  }
}

test('--format-version 1 to 4: the same records, each with its own digest (computed here from the format text); 4 adds the root digest; all received, to the same bytes', async () => {
  const streams: Record<number, Buffer> = {};
  for (const v of [1, 2, 3, 4]) {
    const out = s.path(`v${v}.s`);
    const r = runCli(['send', '--metadata', meta, '--data', data, '--snap', '4', '--size', String(SIZE), '-o', out, '-q', '--json', '--format-version', String(v)]);
    expect([r.status, JSON.parse(r.stderr).digest]).toEqual([0, expect.stringMatching(/^[0-9a-f]{64}$/)]);
    const b = readFileSync(out);
    streams[v] = b;
    const body = b.subarray(0, b.length - 96);
    let want: string;
    if (v === 1) want = createHash('sha256').update(body).digest('hex');
    else {
      // Version 2: SHA-256 (node:crypto); versions 3 and 4: BLAKE3 (@noble/hashes, not the addon's), the same text.
      const h = (x: Uint8Array): Buffer => (v === 2 ? createHash('sha256').update(x).digest() : Buffer.from(blake3(x)));
      const S = 1 << 20;
      const parts: Buffer[] = [Buffer.from(`dmthin stream digest ${Math.min(v, 3)}\0`, 'latin1'), Buffer.from([0, 0, 16, 0])];
      for (let i = 0; i < body.length; i += S) parts.push(h(body.subarray(i, i + S)));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(body.length));
      want = h(Buffer.concat([...parts, len])).toString('hex');
    }
    expect(body.length).toBeGreaterThan(2 << 20); // several segments, the last one short
    expect([b.readUInt32LE(32), JSON.parse(r.stderr).digest, b.subarray(-32).toString('hex')]).toEqual([v, want, want]);
    const t = s.path(`v${v}.t`);
    const rr = runCli(['receive', '--target', t, '--input', out, '--create', '--json', '-q']);
    expect([rr.status, JSON.parse(rr.stdout).digest]).toEqual([0, want]);
    expect(sha256File(t)).toBe(await expectedSha(md, 4, SIZE));
  }
  // Versions 1-3: only the version field, the header's CRC, the end record's CRC and the digest differ.
  const n = streams[1].length;
  for (const v of [2, 3]) {
    expect(streams[v].length).toBe(n);
    const diff = [...streams[1].keys()].filter((i) => streams[1][i] !== streams[v][i]);
    expect(diff.every((i) => (i >= 20 && i < 24) || i === 32 || (i >= n - 76 && i < n - 72) || i >= n - 32)).toBe(true);
  }
  // Version 4: version 3's header payload with flag bit 1 and, after the identity, the SHA-256 of the
  // text 'dmthin mapping root 1' and the device's root node as the file stores it; every later record the same.
  const [h3, h4] = [streams[3], streams[4]];
  const len3 = h3.readUInt32LE(8);
  const len4 = h4.readUInt32LE(8);
  expect(len4).toBe(len3 + 32);
  const p3 = h3.subarray(24, 24 + len3);
  const p4 = h4.subarray(24, 24 + len4);
  expect([p3.readUInt32LE(12), p4.readUInt32LE(12)]).toEqual([0, 2]);
  expect(p4.subarray(16, len3).equals(p3.subarray(16))).toBe(true);
  const root = createHash('sha256').update(Buffer.from('dmthin mapping root 1\0', 'latin1')).update(rootNodeOf(meta, 4)).digest('hex');
  expect(p4.subarray(len3).toString('hex')).toBe(root);
  const rest3 = h3.subarray(24 + len3);
  const rest4 = h4.subarray(24 + len4);
  const m = rest3.length;
  expect(rest4.length).toBe(m);
  // The end record's CRC, its stream_bytes (payload offset 32: 32 more) and the digest.
  expect([...rest3.keys()].filter((i) => rest3[i] !== rest4[i]).every((i) => (i >= m - 76 && i < m - 72) || i >= m - 40)).toBe(true);
  expect(rest4.readBigUInt64LE(m - 40) - rest3.readBigUInt64LE(m - 40)).toBe(32n);
  // The default is version 4; another version is a usage error before anything is read.
  const def = s.path('vdefault.s');
  expect(runCli(['send', '--metadata', meta, '--data', data, '--snap', '4', '--size', String(SIZE), '-q', '-o', def]).status).toBe(0);
  expect(readFileSync(def).equals(streams[4])).toBe(true);
  const bad = runCli(['send', '--metadata', meta, '--data', data, '--snap', '4', '--size', String(SIZE), '-o', s.path('v5.s'), '--format-version', '5']);
  expect([bad.status, bad.stderr]).toEqual([1, "dmthin send: --format-version must be one of 1, 2, 3, 4; got '5' [EINVAL]\n"]);
  expect(readdirSync(s.dir).filter((f) => f.startsWith('v5.s'))).toEqual([]);
});

test('receive from a pipe whose writer has already gone (the stream waits in the pipe): read whole; junk refused', async () => {
  const stream = s.path('gone-writer.s');
  expect(runCli(['send', '--metadata', meta, '--data', data, '--snap', '4', '--size', String(SIZE), '-o', stream, '-q']).status).toBe(0);
  const t = s.path('gone-writer.t');
  // Under 64 KiB fits the pipe: cat writes it all and exits before receive starts.
  // Snapshot 3 against 2 (the fixture maps them alike): header, end record and no data.
  const full2 = s.path('gone-writer-full2.s');
  const small = s.path('gone-writer-small.s');
  expect(runCli(['send', '--metadata', meta, '--data', data, '--snap', '2', '--size', String(SIZE), '-o', full2, '-q']).status).toBe(0);
  const r0 = runCli(['send', '--metadata', meta, '--data', data, '--snap', '3', '--base', '2', '--size', String(SIZE), '-o', small, '-q']);
  expect([r0.status, r0.stderr]).toEqual([0, '']);
  expect(readFileSync(small).length).toBeLessThan(65536);
  let p = sh(`cat '${full2}' | exec ${dmthin} receive --target '${t}' --create -q`);
  expect([p.status, p.stderr]).toEqual([0, '']);
  p = sh(`cat '${small}' | (sleep 1; exec ${dmthin} receive --target '${t}' --json -q)`);
  expect([p.status, p.stderr]).toEqual([0, '']);
  expect(JSON.parse(p.stdout)).toMatchObject({ spooled: true, dataBlocks: 0, header: { deviceSize: SIZE, target: { devId: 3 } } });
  expect(sha256File(t)).toBe(await expectedSha(md, 3, SIZE));
  // Not a stream, its writer gone: refused with one line.
  p = sh(`printf junk | (sleep 1; exec ${dmthin} receive --target '${t}' -q)`);
  expect(p.status).toBe(1);
  expect(p.stderr).toMatch(/^dmthin receive: .*(not a dmthin stream|ends after 4 bytes).*\n$/);
  // The full one while its writer is still at it.
  const t2 = s.path('gone-writer2.t');
  p = sh(`cat '${stream}' | ${dmthin} receive --target '${t2}' --create --json -q`);
  expect([p.status, p.stderr]).toEqual([0, '']);
  expect(JSON.parse(p.stdout)).toMatchObject({ spooled: true });
  expect(sha256File(t2)).toBe(await expectedSha(md, 4, SIZE));
});

test('send to stdout, a pipe: exit 0 once the reader has the whole stream (the same bytes as -o FILE)', async () => {
  const file = s.path('stdout-vs-file.s');
  expect(runCli(['send', '--metadata', meta, '--data', data, '--snap', '4', '--size', String(SIZE), '-o', file, '-q']).status).toBe(0);
  // Ending process.stdout under the pipeline made the final flush fail with EPIPE: exit 141.
  const r = await hashOutput(process.execPath, [CLI, 'send', '--metadata', meta, '--data', data, '--snap', '4', '--size', String(SIZE), '-q']);
  expect([r.status, r.stderr]).toEqual([0, '']);
  expect(r.sha256).toBe(createHash('sha256').update(readFileSync(file)).digest('hex'));
});

test('through the held metadata snapshot, from a device image (virtual addressing)', async () => {
  // The "device": what thin device 2 of the held snapshot reads as.
  const held = await ThinMetadata.fromBuffer(fixtureImage(FIX), { metadataSnap: true });
  const dev = s.path('dev2.img');
  const img = Buffer.alloc(SIZE);
  for await (const m of held.mappings(2)) for (let i = 0; i < m.length; i++) patternBlock(m.dataBegin + i, BS).copy(img, (Number(m.originBegin) + i) * BS);
  writeFileSync(dev, img);
  const t = s.path('t2');
  const p = sh(`${dmthin} send --metadata '${meta}' -m --device '${dev}' --snap 2 | ${dmthin} receive --target '${t}' --create`);
  expect([p.status, p.stderr]).toEqual([0, '']);
  expect(sha256File(t)).toBe(await expectedSha(held, 2, SIZE));
  await held.close();
});

test('refusals: exit 1, one line on stderr, target unchanged', () => {
  const t = s.path('t3');
  const full = s.path('full1.s');
  expect(runCli(['send', '--metadata', meta, '--data', data, '--snap', '1', '--size', String(SIZE), '-o', full]).status).toBe(0);
  expect(runCli(['receive', '--target', t, '-i', full, '--create']).status).toBe(0);
  const before = sha256File(t);
  const inc = s.path('inc6from2.s');
  expect(runCli(['send', '--metadata', meta, '--data', data, '--snap', '6', '--base', '2', '--size', String(SIZE), '-o', inc]).status).toBe(0);

  const wrongBase = runCli(['receive', '--target', t, '-i', inc]);
  expect(wrongBase.status).toBe(1);
  expect(wrongBase.stderr.trim().split('\n')).toHaveLength(1);
  expect(wrongBase.stderr).toMatch(/^dmthin receive: incremental stream against device 2 .*\[ESTALE\]\n$/);

  const cut = s.path('cut.s');
  writeFileSync(cut, readFileSync(full).subarray(0, 100_000));
  const trunc = runCli(['receive', '--target', t, '-i', cut]);
  expect([trunc.status, /before a valid end record.*\[EBADMSG\]/.test(trunc.stderr)]).toEqual([1, true]);

  const small = s.path('small');
  writeFileSync(small, Buffer.alloc(4096));
  expect(runCli(['receive', '--target', small, '-i', full]).stderr).toMatch(/\[ENOSPC\]/);
  expect(sha256File(t)).toBe(before);

  // Forced, it applies.
  expect(runCli(['receive', '--target', t, '-i', inc, '--force']).status).toBe(0);
});

test('usage errors', () => {
  const both = runCli(['send', '--pool', 'p', '--metadata', meta, '--snap', '1']);
  expect([both.status, both.stderr]).toEqual([1, expect.stringMatching(/^dmthin send: give --pool .* not both \[EINVAL\]\n$/)]);
  expect(runCli(['send', '--metadata', meta, '--snap', '1', '-o', s.path('x')]).stderr).toMatch(/--data .* or --device/);
  expect(runCli(['send', '--metadata', meta, '--data', data, '--snap', '99', '--size', '1M', '-o', s.path('x')]).stderr).toMatch(/no thin device 99.*\[ENODEV\]/);
  expect(runCli(['send', '--metadata', meta, '--data', data, '--snap', '1', '--size', '12x']).status).toBe(1);
  expect(runCli(['receive', '--target', s.path('x'), '-i', meta, '--discard', 'shred']).stderr).toMatch(/unknown --discard method/);
  expect(runCli(['receive', '--target', s.path('nope'), '-i', meta]).stderr).toMatch(/not a dmthin stream/);
  // A --device image that is not whole sectors is no thin device's copy: its tail is not cut off unasked.
  const odd = s.path('odd.img');
  writeFileSync(odd, Buffer.alloc(1000));
  const r = runCli(['send', '--metadata', meta, '--device', odd, '--snap', '1', '-o', s.path('odd.stream')]);
  expect([r.status, r.stderr]).toEqual([1, expect.stringMatching(/: the device image .*odd\.img is 1000 bytes, not a whole number of 512-byte sectors: to send its first 512 bytes or fewer, give that size \(--size BYTES\) \[EINVAL\]\n$/)]);
  expect(existsSync(s.path('odd.stream'))).toBe(false);
  // An empty --pool-id is no identity (outside hunt: recorded as "").
  const e = runCli(['send', '--metadata', meta, '--data', data, '--snap', '1', '--size', '1M', '--pool-id', '', '-o', s.path('pid.stream')]);
  expect([e.status, e.stderr]).toEqual([1, expect.stringMatching(/: the pool identity \(poolId, --pool-id\) is empty: .*\[EINVAL\]\n$/)]);
  expect(existsSync(s.path('pid.stream'))).toBe(false);
});

/** Whether process `pid` holds a file that was in `dir` (the spool, unlinked as soon as it is open). */
function spoolOpen(pid: number, dir: string): boolean {
  try {
    return readdirSync(`/proc/${pid}/fd`).some((fd) => {
      try {
        return readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith(`${dir}/`);
      } catch {
        return false;
      }
    });
  } catch {
    return false;
  }
}

test('SIGKILL during a piped receive leaves no spool behind; the rerun is whole', async () => {
  const spool = s.path('spool-kill');
  mkdirSync(spool);
  const t = s.path('t-kill');
  writeFileSync(t, Buffer.alloc(SIZE, 1));
  expect(runCli(['send', '--metadata', meta, '--data', data, '--snap', '1', '--size', String(SIZE), '-o', s.path('kill.s')]).status).toBe(0);
  const full = readFileSync(s.path('kill.s'));
  const child = spawn(process.execPath, [CLI, 'receive', '--target', t, '--spool-dir', spool, '-q'], { stdio: ['pipe', 'ignore', 'pipe'] });
  child.stdin.on('error', () => undefined);
  child.stdin.write(full.subarray(0, full.length >> 1));
  for (let i = 0; i < 100 && !spoolOpen(child.pid!, spool); i++) await new Promise((r) => setTimeout(r, 50));
  expect(spoolOpen(child.pid!, spool)).toBe(true);
  child.kill('SIGKILL');
  await new Promise((r) => child.on('close', r));
  expect(readdirSync(spool)).toEqual([]);
  expect(readFileSync(t).every((b) => b === 1)).toBe(true); // killed while verifying: nothing written
  const p = sh(`${dmthin} receive --target '${t}' --spool-dir '${spool}' -q < '${s.path('kill.s')}'`);
  expect([p.status, p.stderr]).toEqual([0, '']);
  expect(sha256File(t)).toBe(await expectedSha(md, 1, SIZE));
  expect(readdirSync(spool)).toEqual([]);
});

test('SIGTERM during a piped receive: exit 143, spool removed, target untouched', async () => {
  const spool = s.path('spool-sig');
  mkdirSync(spool);
  const t = s.path('t4');
  writeFileSync(t, Buffer.alloc(SIZE, 1));
  expect(runCli(['send', '--metadata', meta, '--data', data, '--snap', '1', '--size', String(SIZE), '-o', s.path('sig.s')]).status).toBe(0);
  const full = readFileSync(s.path('sig.s'));
  const child = spawn(process.execPath, [CLI, 'receive', '--target', t, '--spool-dir', spool], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  child.stdin.write(full.subarray(0, full.length >> 1));
  // Wait until the child has its spool open (unlinked at once, so seen in /proc), then interrupt.
  for (let i = 0; i < 100 && !spoolOpen(child.pid!, spool); i++) await new Promise((r) => setTimeout(r, 50));
  expect(spoolOpen(child.pid!, spool)).toBe(true);
  await new Promise((r) => setTimeout(r, 200));
  child.kill('SIGTERM');
  const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  expect(code).toBe(143);
  expect(stderr).toMatch(/interrupted/);
  expect(readdirSync(spool)).toEqual([]);
  expect(readFileSync(t).every((b) => b === 1)).toBe(true);
});
