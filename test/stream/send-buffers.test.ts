/**
 * send() into a file or stdout reads its batches into three buffers reused
 * for the whole stream and hashes them in place (the digest on the addon's
 * thread): a buffer refilled before its bytes were hashed or written would
 * corrupt the stream. A 63 MiB device is eight 8 MiB batches, so every buffer
 * is refilled at least once; the result must be the device's content, the
 * same bytes as the Readable (fresh buffers) gives. Receiving it from the
 * file holds each 1 MiB input chunk until the digest has read it in place
 * (fileChunks' beforeReuse): a chunk refilled too early fails the digest.
 */
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { send } from '../../src/ops/send';
import { receive } from '../../src/ops/receive';
import { NativeDataSource } from '../../src/stream/send/data-source';
import { sendStream } from '../../src/stream/send/send-stream';
import { ThinMetadata } from '../../src/thin/metadata';
import { fixtureImage } from '../helpers/fixtures';
import { expectedSha, scratch, sha256File, writeDataFile, type Scratch } from './helpers';

const BS = 65536;
let s: Scratch;
beforeAll(() => (s = scratch()));
afterAll(() => s.cleanup());

test('a stream of many batches through reused buffers is the device, byte for byte the Readable stream', async () => {
  const image = fixtureImage('range-merge');
  const meta = s.path('meta.bin');
  const data = s.path('data.bin');
  writeFileSync(meta, image);
  await writeDataFile(image, data, BS);
  const md = await ThinMetadata.fromBuffer(image);
  let end = 0;
  let mapped = 0;
  for await (const m of md.mappings(1)) {
    end = Math.max(end, Number(m.originBegin) + m.length);
    mapped += m.length;
  }
  expect(mapped * BS).toBeGreaterThan(7 * (8 << 20)); // more batches than buffers, several times over
  const size = end * BS;

  const file = s.path('dev1.stream');
  const summary = await send({ metadata: meta, data, snap: 1, deviceSize: size, output: file });
  expect(summary.dataBlocks).toBe(mapped);

  // The same plan through the Readable, which never reuses a buffer.
  const source = await NativeDataSource.open(data, { addressing: 'data' });
  const h = createHash('sha256');
  try {
    for await (const c of sendStream({ metadata: md, snap: 1, source, deviceSize: size })) h.update(c as Buffer);
  } finally {
    await source.close();
  }
  expect(createHash('sha256').update(readFileSync(file)).digest('hex')).toBe(h.digest('hex'));

  const target = s.path('dev1.target');
  const r = await receive({ target, input: file, create: true });
  expect(r.digest).toBe(summary.digest);
  expect(sha256File(target)).toBe(await expectedSha(md, 1, size));
  await md.close();
});

test('a data source closed after an abandoned send has closed its descriptors when close() resolves; await using closes it too (outside hunt: open for some ms more)', async () => {
  const image = fixtureImage('range-merge');
  const data = s.path('data-close.bin');
  await writeDataFile(image, data, BS);
  const md = await ThinMetadata.fromBuffer(image);
  let end = 0;
  for await (const m of md.mappings(1)) end = Math.max(end, Number(m.originBegin) + m.length);
  const openOnData = (): number =>
    readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`) === data;
      } catch {
        return false;
      }
    }).length;
  let stillOpen = 0;
  for (let i = 0; i < 10; i++) {
    const source = await NativeDataSource.open(data, { addressing: 'data' });
    let n = 0;
    // Abandoned after a few records: its read-ahead is still in flight.
    for await (const _ of sendStream({ metadata: md, snap: 1, source, deviceSize: end * BS })) if (++n > 3) break;
    await source.close();
    if (openOnData() > 0) stillOpen++;
  }
  expect(stillOpen).toBe(0);
  {
    await using source = await NativeDataSource.open(data, { addressing: 'data' });
    expect(openOnData()).toBeGreaterThan(0);
  }
  expect(openOnData()).toBe(0);
  await md.close();
});

test('an abort ends a stream whose source never answers: the consumer rejects with AbortError at once (outside hunt V: neither error nor close came, it waited for ever)', async () => {
  const image = fixtureImage('snapshots');
  await using md = await ThinMetadata.fromBuffer(image);
  let reads = 0;
  const stalled = {
    addressing: 'data' as const,
    readBlocks: () => {
      reads++;
      return new Promise<Buffer>(() => undefined);
    },
  };
  const ac = new AbortController();
  const consume = (async () => {
    for await (const _ of sendStream({ metadata: md, snap: 1, source: stalled, deviceSize: 1 << 30, signal: ac.signal }));
  })();
  // Until the first read is waiting.
  for (let i = 0; i < 200 && reads === 0; i++) await new Promise((r) => setTimeout(r, 5));
  expect(reads).toBeGreaterThan(0);
  const t0 = Date.now();
  ac.abort();
  await expect(consume).rejects.toMatchObject({ name: 'AbortError', code: 'ABORT_ERR' });
  expect(Date.now() - t0).toBeLessThan(1000);
});
