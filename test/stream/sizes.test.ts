/**
 * Device sizes in send and receive: a send never guesses one (the end of the
 * highest mapped block dropped later changes), a change outside the declared
 * size is an error, and receive refuses an incremental stream for a device
 * of another size than its base was received at unless told it was resized.
 * The shrinking-snapshot case is the bundled example pool (examples/): its
 * device 1 maps block 200, device 2 (the newer snapshot) does not, so device
 * 2 ends at block 101 and a guessed size left block 200 stale.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { StreamError } from '../../src/errors';
import { receive } from '../../src/ops/receive';
import { sendStream } from '../../src/stream/send/send-stream';
import { ThinMetadata } from '../../src/thin/metadata';
import { runCli } from '../cli/run-cli';
import { fixtureImage } from '../helpers/fixtures';
import { expectedSha, junkFile, PatternSource, scratch, sha256File, writeDataFile, type Scratch } from './helpers';

const BS = 65536;
let s: Scratch;
beforeAll(() => (s = scratch()));
afterAll(() => s.cleanup());

function bytesAt(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

function shaRange(path: string, offset: number, length: number): string {
  return createHash('sha256').update(bytesAt(path, offset, length)).digest('hex');
}

describe('the bundled example pool: a snapshot that ends below its base', () => {
  const image = readFileSync(join(__dirname, '..', '..', 'examples', 'pool.bin'));
  let md: ThinMetadata;
  let meta: string;
  let data: string;
  const SIZE = 256 * BS; // the volume's size (16 MiB): more than either snapshot maps

  beforeAll(async () => {
    md = await ThinMetadata.fromBuffer(image);
    meta = s.path('pool.bin');
    data = s.path('pool-data.bin');
    writeFileSync(meta, image);
    await writeDataFile(image, data, BS);
  });
  afterAll(() => md.close());

  test('the example is the case: device 1 maps block 200, device 2 does not, and maps nothing past block 100', async () => {
    const ends: Record<number, number[]> = { 1: [], 2: [] };
    for (const d of [1, 2]) for await (const r of md.mappings(d)) ends[d].push(Number(r.originBegin) + r.length - 1);
    expect(ends[1]).toContain(200);
    expect(Math.max(...ends[2])).toBe(100);
  });

  test('offline --data without --size is refused, saying how to give it; no output is left', () => {
    const out = s.path('nosize.stream');
    const r = runCli(['send', '--metadata', meta, '--data', data, '--snap', '2', '--base', '1', '-o', out]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^dmthin send: the size of thin device 2 is not recorded in pool metadata.*--size BYTES.*lvs -o lv_size --units b.*\[EINVAL\]\n$/);
    expect(existsSync(out)).toBe(false);
  });

  test('the size the old guess gave (end of block 100) is refused: block 200 is a change outside it', () => {
    const r = runCli(['send', '--metadata', meta, '--data', data, '--snap', '2', '--base', '1', '--size', String(101 * BS), '-o', s.path('guess.stream')]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^dmthin send: device 1 maps virtual block 200 \(unmapped in snapshot 2.*outside the device size of 6619136 bytes \(101 blocks\).*\[ERANGE\]\n$/);
  });

  test('with the real size: full 1, then 2 incrementally; block 200 reads as zeros afterwards', async () => {
    const target = s.path('example.target');
    junkFile(target, SIZE, 5);
    const full = s.path('ex-full1.stream');
    const inc = s.path('ex-inc2.stream');
    let r = runCli(['send', '--metadata', meta, '--data', data, '--snap', '1', '--size', '16M', '-o', full, '-q']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    r = runCli(['receive', '--target', target, '-i', full, '-q']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(sha256File(target)).toBe(await expectedSha(md, 1, SIZE));
    expect(bytesAt(target, 200 * BS, BS).some((b) => b !== 0)).toBe(true);

    r = runCli(['send', '--metadata', meta, '--data', data, '--snap', '2', '--base', '1', '--size', '16M', '-o', inc, '-q', '--json']);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stderr)).toMatchObject({ discardBlocks: 1 }); // block 200
    r = runCli(['receive', '--target', target, '-i', inc, '-q']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(sha256File(target)).toBe(await expectedSha(md, 2, SIZE));
    expect(bytesAt(target, 200 * BS, BS).every((b) => b === 0)).toBe(true);
  });
});

describe('receive: an incremental stream of another size than its base', () => {
  let md: ThinMetadata;
  const A = 210 * BS; // metadata-snap-diverged (held): devices 1, 2, 3, 5 all map below block 210
  const GROWN = 300 * BS;

  async function make(snap: number, base: number | undefined, size: number): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const c of sendStream({ metadata: md, snap, base, source: new PatternSource(BS), deviceSize: size, poolId: 'p' })) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  }

  beforeAll(async () => {
    md = await ThinMetadata.fromBuffer(fixtureImage('metadata-snap-diverged'), { metadataSnap: true });
  });
  afterAll(() => md.close());

  test('refused (size-changed) without resized; grown with it: the new tail reads as zeros', async () => {
    const t = s.path('grow.target');
    junkFile(t, GROWN, 11); // junk beyond the first size too: it must not survive the growth
    await receive({ target: t, input: Readable.from([await make(1, undefined, A)]) });
    const stateFile = `${t}.dmthin-state.json`;
    const before = { data: sha256File(t), state: readFileSync(stateFile, 'utf8') };
    const inc = await make(2, 1, GROWN);

    const e = await receive({ target: t, input: Readable.from([inc]) }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(StreamError);
    expect(e).toMatchObject({ reason: 'size-changed', code: 'ESTALE', deviceSize: GROWN, baseSize: A, path: stateFile });
    expect((e as Error).message).toMatch(/device is 19660800 bytes, but its base .* was received at 13762560 bytes/);
    expect({ data: sha256File(t), state: readFileSync(stateFile, 'utf8') }).toEqual(before);

    const r = await receive({ target: t, input: Readable.from([inc]), resized: true });
    expect(r.resizedFrom).toBe(A);
    expect(sha256File(t)).toBe(await expectedSha(md, 2, GROWN));
    const st = JSON.parse(readFileSync(stateFile, 'utf8'));
    expect([st.current.snapshot.devId, st.current.deviceSize, st.pending]).toEqual([2, GROWN, null]);
  });

  test('shrunk with resized: [0, new size) is the snapshot, the target keeps its bytes beyond', async () => {
    const t = s.path('shrink.target');
    junkFile(t, A, 12);
    await receive({ target: t, input: Readable.from([await make(1, undefined, A)]) });
    // Neither device maps past block 203 (right_only 200..202 is the highest change).
    const SMALL = 204 * BS;
    const inc = await make(3, 1, SMALL);
    expect(await receive({ target: t, input: Readable.from([inc]) }).catch((x: unknown) => x)).toMatchObject({ reason: 'size-changed' });
    const tail = shaRange(t, SMALL, A - SMALL);
    const r = await receive({ target: t, input: Readable.from([inc]), resized: true });
    expect(r.resizedFrom).toBe(A);
    expect(shaRange(t, 0, SMALL)).toBe(await expectedSha(md, 3, SMALL));
    expect(shaRange(t, SMALL, A - SMALL)).toBe(tail);
    // The next incremental at the new size needs nothing more.
    await receive({ target: t, input: Readable.from([await make(5, 3, SMALL)]) });
    expect(shaRange(t, 0, SMALL)).toBe(await expectedSha(md, 5, SMALL));
  });

  test('the CLI names the flag and exits 1 with one line', async () => {
    const t = s.path('cli-resize.target');
    junkFile(t, GROWN, 13);
    const full = s.path('rs-full.stream');
    const inc = s.path('rs-inc.stream');
    writeFileSync(full, await make(1, undefined, A));
    writeFileSync(inc, await make(2, 1, GROWN));
    expect(runCli(['receive', '--target', t, '-i', full, '-q']).status).toBe(0);
    const r = runCli(['receive', '--target', t, '-i', inc, '-q']);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/receive it as resized \(--resized; .*\[ESTALE\]\n$/);
    const ok = runCli(['receive', '--target', t, '-i', inc, '-q', '--resized', '--json']);
    expect(ok.status).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ resizedFrom: A, header: { deviceSize: GROWN } });
    expect(sha256File(t)).toBe(await expectedSha(md, 2, GROWN));
  });
});
