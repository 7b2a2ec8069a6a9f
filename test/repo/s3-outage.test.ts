// Injected failure: the radosgw a writer talks to is stopped mid-way through
// an upload and started again. Within the retry budget the writer resumes and
// every object lands whole; past it, the writer fails with RepoError 'backend'
// naming the key and nothing partial is visible. The gateway is this file's
// own (describeS3 ownGateway), so other S3 test files are not disturbed.
import { createHash } from 'node:crypto';
import { ListMultipartUploadsCommand } from '@aws-sdk/client-s3';
import { RepoError } from '../../src/errors';
import { createS3Backend, type S3RetryInfo } from '../../src/repo/s3-backend';
import { describeS3, s3Client } from '../helpers/ceph';
import { contractBytes } from './backend-contract';

const MIB = 1024 * 1024;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

describeS3(
  'S3 backend: radosgw stopped mid-upload',
  (s3) => {
    it('a sequence of puts rides out a gateway restart: every object lands, the writer retried', async () => {
      const loc = s3.location();
      const retries: S3RetryInfo[] = [];
      // The default retry budget: 8 attempts, 200 ms doubling to 5 s, half of
      // each delay fixed: at least ~8 s of waiting, more than a restart takes.
      const b = await createS3Backend(loc.bucket, loc.prefix, { onRetry: (r) => retries.push(r) });
      const n = 60;
      const datas = Array.from({ length: n }, (_, i) => contractBytes(64 * 1024 + i, i + 1));
      let done = 0;
      let killed = false;
      const writer = (async () => {
        for (let i = 0; i < n; i++) {
          await b.put(`chunks/${String(i).padStart(3, '0')}`, datas[i]!, { ifAbsent: true });
          done++;
          // Past the tenth object the writer slows down until the gateway is
          // dead, so the crash lands mid-sequence however loaded the machine.
          await sleep(done >= 10 && !killed ? 100 : 10);
        }
      })();
      while (done < 10) await sleep(10);
      await s3.stopGateway();
      killed = true;
      const stoppedAt = done;
      await sleep(1000);
      await s3.startGateway();
      await writer;
      expect(stoppedAt).toBeLessThan(n);
      expect(retries.length).toBeGreaterThan(0);
      expect(retries.every((r) => r.key.startsWith('chunks/'))).toBe(true);
      const listed = (await collect(b.list('chunks/'))).map((o) => o.key).sort();
      expect(listed).toEqual(datas.map((_, i) => `chunks/${String(i).padStart(3, '0')}`));
      for (let i = 0; i < n; i++) expect(sha(await b.get(`chunks/${String(i).padStart(3, '0')}`))).toBe(sha(datas[i]!));
      await b.close();
    });

    it('a multipart put rides out a gateway restart between its parts: the upload resumes and completes', async () => {
      const loc = s3.location();
      const retries: S3RetryInfo[] = [];
      const b = await createS3Backend(loc.bucket, loc.prefix, { partSize: 5 * MIB, onRetry: (r) => retries.push(r) });
      const total = 6 * 5 * MIB + 1234;
      const h = createHash('sha256');
      let produced = 0;
      let outage: Promise<void> | undefined;
      const body = (async function* () {
        while (produced < total) {
          const p = contractBytes(Math.min(MIB, total - produced), produced + 1);
          h.update(p);
          produced += p.length;
          // Past two parts (the first sent, the second in flight): the gateway goes away.
          if (!outage && produced >= 2 * 5 * MIB + MIB) {
            const stopped = s3.stopGateway();
            outage = (async () => {
              await stopped;
              await sleep(1000);
              await s3.startGateway();
            })();
            // The rest of the body waits for the crash: its parts meet a dead gateway.
            await stopped;
          }
          yield p;
        }
      })();
      await expect(b.put('manifests/big', body)).resolves.toBe(true);
      await outage;
      expect(retries.some((r) => /part \d+ upload|multipart complete/.test(r.op))).toBe(true);
      const st = await b.stat('manifests/big');
      expect(st!.size).toBe(total);
      const g = createHash('sha256');
      for await (const p of b.getStream('manifests/big')) g.update(p);
      expect(g.digest('hex')).toBe(h.digest('hex'));
      await b.close();
    });

    it('a read broken by a gateway crash resumes where it broke (Range + If-Match) and yields every byte once', async () => {
      const loc = s3.location();
      const retries: S3RetryInfo[] = [];
      const b = await createS3Backend(loc.bucket, loc.prefix, { onRetry: (r) => retries.push(r) });
      const total = 40 * MIB + 321;
      const h = createHash('sha256');
      await b.put(
        'manifests/long',
        (async function* () {
          for (let off = 0; off < total; off += MIB) {
            const p = contractBytes(Math.min(MIB, total - off), off + 1);
            h.update(p);
            yield p;
          }
        })(),
      );
      const g = createHash('sha256');
      let got = 0;
      let outage: Promise<void> | undefined;
      let killed = false;
      for await (const p of b.getStream('manifests/long')) {
        g.update(p);
        got += p.length;
        if (!outage && got >= 4 * MIB) {
          outage = (async () => {
            await s3.stopGateway();
            killed = true;
            await sleep(500);
            await s3.startGateway();
          })();
        }
        // A slow reader until the crash: the gateway is still sending when it dies.
        if (outage && !killed) await sleep(50);
      }
      await outage;
      expect(got).toBe(total);
      expect(g.digest('hex')).toBe(h.digest('hex'));
      expect(retries.some((r) => r.op === 'get (resumed)')).toBe(true);
      await b.close();
    });

    it('an outage longer than the retries: RepoError backend naming the key, nothing partial visible', async () => {
      const loc = s3.location();
      // A small budget (3 attempts, 50-100 ms apart) so the outage outlasts it.
      const b = await createS3Backend(loc.bucket, loc.prefix, { partSize: 5 * MIB, maxAttempts: 3, baseDelayMs: 50, maxDelayMs: 100 });
      await b.put('chunks/before', Buffer.from('stored before the outage'));
      let produced = 0;
      let stopped: Promise<void> | undefined;
      const body = (async function* () {
        while (produced < 4 * 5 * MIB) {
          produced += MIB;
          if (!stopped && produced > 5 * MIB + MIB) stopped = s3.stopGateway();
          // Hold the next part until the gateway is really gone.
          if (stopped && produced === 9 * MIB) await stopped;
          yield contractBytes(MIB, produced);
        }
      })();
      const e1 = await b.put('manifests/cut', body).then(() => null, (e: unknown) => e);
      await stopped;
      expect(e1).toBeInstanceOf(RepoError);
      expect(e1).toMatchObject({ reason: 'backend', key: 'manifests/cut', code: 'EIO' });
      expect((e1 as Error).message).toMatch(/manifests\/cut.*after 3 attempts/);
      const e2 = await b.put('chunks/during', Buffer.from('x'), { ifAbsent: true }).then(() => null, (e: unknown) => e);
      expect(e2).toMatchObject({ reason: 'backend', key: 'chunks/during' });
      const e3 = await b.get('chunks/before').then(() => null, (e: unknown) => e);
      expect(e3).toMatchObject({ reason: 'backend', key: 'chunks/before' });
      await s3.startGateway();
      // Nothing of the failed puts is an object; what was stored before is whole.
      expect(await b.stat('manifests/cut')).toBeNull();
      expect(await b.stat('chunks/during')).toBeNull();
      expect((await collect(b.list(''))).map((o) => o.key)).toEqual(['chunks/before']);
      expect((await b.get('chunks/before')).toString()).toBe('stored before the outage');
      // The abort of the cut upload could not reach the gateway either: its
      // parts wait, invisible, for a bucket lifecycle rule
      // (AbortIncompleteMultipartUpload) or a later abort.
      const raw = s3Client(s3);
      const ups = await raw.send(new ListMultipartUploadsCommand({ Bucket: loc.bucket, Prefix: `${loc.prefix}/` }));
      raw.destroy();
      expect((ups.Uploads ?? []).every((u) => u.Key === `${loc.prefix}/manifests/cut`)).toBe(true);
      await b.close();
    });
  },
  { ownGateway: true },
);
