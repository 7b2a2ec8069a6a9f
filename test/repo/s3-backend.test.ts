// The S3 backend on a real Ceph cluster (radosgw): the backend contract, and
// what only S3 has (pagination, batched deletes, multipart uploads and their
// cleanup, error mapping, the SDK's Node-version warning kept off stderr).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectsCommand, GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { RepoError } from '../../src/errors';
import type { Backend } from '../../src/repo/backend';
import { createS3Backend } from '../../src/repo/s3-backend';
import { describeS3, s3Client, type S3TestContext } from '../helpers/ceph';
import { REPO_ROOT } from '../helpers/fixtures';
import { lossyProxy, type LossyProxy } from '../helpers/tcp-proxy';
import { backendContract, contractBytes } from './backend-contract';

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

async function emptyPrefix(bucket: string, prefix: string): Promise<void> {
  const b = await createS3Backend(bucket, prefix);
  try {
    const keys = (await collect(b.list(''))).map((o) => o.key);
    await b.delete(keys);
  } finally {
    await b.close();
  }
}

describeS3('S3 backend (Ceph radosgw)', (s3) => {
  // 5 MiB parts (S3's smallest) so the "larger than a part" cases move 11 MiB
  // instead of 20; the default 8 MiB part size is covered below.
  backendContract(
    'S3',
    async () => {
      const loc = s3.location();
      const backend = await createS3Backend(loc.bucket, loc.prefix, { partSize: 5 * 1024 * 1024 });
      return { backend, cleanup: () => emptyPrefix(loc.bucket, loc.prefix) };
    },
    { largeBytes: 11 * 1024 * 1024 + 12345 },
  );

  describe('S3 specifics', () => {
    let b: Backend;
    let loc: ReturnType<S3TestContext['location']>;
    let raw: S3Client;
    beforeEach(async () => {
      loc = s3.location();
      b = await createS3Backend(loc.bucket, loc.prefix);
      raw = s3Client(s3);
    });
    afterEach(async () => {
      await b.close();
      raw.destroy();
      await emptyPrefix(loc.bucket, loc.prefix);
    });

    it('ifAbsent with checkedAbsent skips the HEAD but stays conditional: an existing object is not overwritten', async () => {
      expect(await b.put('chunks/ab/cd', Buffer.from('first'), { ifAbsent: true })).toBe(true);
      // The caller claims it checked (a race lost in between): If-None-Match still refuses the write.
      expect(await b.put('chunks/ab/cd', Buffer.from('second'), { ifAbsent: true, checkedAbsent: true })).toBe(false);
      expect((await b.get('chunks/ab/cd')).toString()).toBe('first');
      expect(await b.put('chunks/ab/ef', Buffer.from('new'), { ifAbsent: true, checkedAbsent: true })).toBe(true);
      expect((await b.get('chunks/ab/ef')).toString()).toBe('new');
    });

    it('location is s3://bucket/prefix and objects live under the prefix', async () => {
      expect(b.location).toBe(`s3://${loc.bucket}/${loc.prefix}`);
      await b.put('k/1', Buffer.from('x'));
      const h = await raw.send(new HeadObjectCommand({ Bucket: loc.bucket, Key: `${loc.prefix}/k/1` }));
      expect(h.ContentLength).toBe(1);
      // A sibling prefix that starts with the same letters is not listed.
      const sib = await createS3Backend(loc.bucket, `${loc.prefix}x`);
      await sib.put('k/2', Buffer.from('y'));
      expect((await collect(b.list(''))).map((o) => o.key)).toEqual(['k/1']);
      await sib.delete(['k/2']);
      await sib.close();
    });

    it('above the part size a put is a multipart upload (ETag "-N"); at or below, one PUT', async () => {
      await b.put('multi', contractBytes(3 * 5 * 1024 * 1024 + 7, 2));
      const m = await raw.send(new HeadObjectCommand({ Bucket: loc.bucket, Key: `${loc.prefix}/multi` }));
      // 15 MiB + 7 bytes in 8 MiB parts: 2 parts.
      expect(m.ETag).toMatch(/-2"$/);
      await b.put('single', contractBytes(8 * 1024 * 1024, 3));
      const one = await raw.send(new HeadObjectCommand({ Bucket: loc.bucket, Key: `${loc.prefix}/single` }));
      expect(one.ETag).toMatch(/^"[0-9a-f]{32}"$/);
      const small = await createS3Backend(loc.bucket, loc.prefix, { partSize: 5 * 1024 * 1024 });
      await small.put('multi5', contractBytes(3 * 5 * 1024 * 1024 + 7, 2));
      const m5 = await raw.send(new HeadObjectCommand({ Bucket: loc.bucket, Key: `${loc.prefix}/multi5` }));
      expect(m5.ETag).toMatch(/-4"$/);
      await small.close();
    });

    it('a failed or aborted multipart put leaves no upload behind', async () => {
      const fail = (async function* () {
        for (let i = 0; i < 20; i++) yield contractBytes(1 << 20, i + 1);
        throw new Error('source failed');
      })();
      await expect(b.put('failed', fail)).rejects.toThrow('source failed');
      const ac = new AbortController();
      const slow = (async function* () {
        for (let i = 0; ; i++) {
          if (i === 12) ac.abort();
          yield contractBytes(1 << 20, i + 1);
        }
      })();
      await expect(b.put('aborted', slow, { signal: ac.signal })).rejects.toMatchObject({ code: 'ABORT_ERR' });
      const ups = await raw.send(new ListMultipartUploadsCommand({ Bucket: loc.bucket, Prefix: `${loc.prefix}/` }));
      expect(ups.Uploads ?? []).toEqual([]);
      expect(await collect(b.list(''))).toEqual([]);
    });

    describe('an answer lost after the write landed (a proxy breaks the connection once the server has replied)', () => {
      let proxy: LossyProxy;
      let lossy: Backend;
      let retries: number;
      beforeEach(async () => {
        proxy = await lossyProxy(s3.endpoint);
        retries = 0;
        // The SDK reads the endpoint from the environment when it first
        // sends, so it stays pointed at the proxy for the whole test; the
        // checks use `raw`, which names the real endpoint.
        saved = process.env.AWS_ENDPOINT_URL_S3;
        process.env.AWS_ENDPOINT_URL_S3 = proxy.url;
        lossy = await createS3Backend(loc.bucket, loc.prefix, { partSize: 5 * 1024 * 1024, baseDelayMs: 50, maxDelayMs: 50, onRetry: () => retries++ });
      });
      afterEach(async () => {
        await lossy.close();
        await proxy.close();
        process.env.AWS_ENDPOINT_URL_S3 = saved;
      });
      let saved: string | undefined;
      const read = async (key: string): Promise<Buffer> =>
        Buffer.from(await (await raw.send(new GetObjectCommand({ Bucket: loc.bucket, Key: `${loc.prefix}/${key}` }))).Body!.transformToByteArray());

      it('ifAbsent PUT: the retry meets its own object (412) and knows it by the ETag: stored, resolves true', async () => {
        const body = contractBytes(100_000, 7);
        proxy.loseNext(/^PUT \S*\/chunks\/aa\/01[ ?]/);
        expect(await lossy.put('chunks/aa/01', body, { ifAbsent: true, checkedAbsent: true })).toBe(true);
        expect(proxy.applied).toBe(1);
        expect(retries).toBe(1);
        expect((await read('chunks/aa/01')).equals(body)).toBe(true);
      });

      it('ifAbsent PUT: a retry that meets an object another writer stored (412, other ETag) resolves false and leaves it', async () => {
        const Key = `${loc.prefix}/chunks/aa/02`;
        // The first attempt never reaches the server; meanwhile another writer stores the key.
        proxy.loseNext(/^PUT \S*\/chunks\/aa\/02[ ?]/, {
          refuse: true,
          before: async () => {
            await raw.send(new PutObjectCommand({ Bucket: loc.bucket, Key, Body: Buffer.from('another writer') }));
          },
        });
        expect(await lossy.put('chunks/aa/02', contractBytes(1000, 8), { ifAbsent: true, checkedAbsent: true })).toBe(false);
        expect(proxy.applied).toBe(1);
        expect(retries).toBe(1);
        expect((await read('chunks/aa/02')).toString()).toBe('another writer');
      });

      const COMPLETE = /^POST \S*\/chunks\/aa\/03\?\S*uploadId=/;
      const uploadsLeft = async (): Promise<unknown[]> => (await raw.send(new ListMultipartUploadsCommand({ Bucket: loc.bucket, Prefix: `${loc.prefix}/` }))).Uploads ?? [];

      it('ifAbsent multipart, a lost complete answer: radosgw answers the retried complete with success; resolves true, no upload left', async () => {
        const body = contractBytes(2 * 5 * 1024 * 1024 + 123, 9);
        proxy.loseNext(COMPLETE);
        expect(await lossy.put('chunks/aa/03', body, { ifAbsent: true, checkedAbsent: true })).toBe(true);
        expect(proxy.applied).toBe(1);
        expect(retries).toBe(1);
        expect((await read('chunks/aa/03')).equals(body)).toBe(true);
        const m = await raw.send(new HeadObjectCommand({ Bucket: loc.bucket, Key: `${loc.prefix}/chunks/aa/03` }));
        expect(m.ETag).toMatch(/-3"$/);
        expect(await uploadsLeft()).toEqual([]);
      });

      it.each([
        [404, 'NoSuchUpload'],
        [412, 'PreconditionFailed'],
      ])('ifAbsent multipart, a lost complete answer, the retry answered %i %s (as AWS, or a store honouring If-None-Match there, may): ours by the multipart ETag, resolves true', async (status, code) => {
        const body = contractBytes(2 * 5 * 1024 * 1024 + 123, 11);
        proxy.loseNext(COMPLETE);
        proxy.answerNext(COMPLETE, status, code);
        expect(await lossy.put('chunks/aa/03', body, { ifAbsent: true, checkedAbsent: true })).toBe(true);
        expect(proxy.applied).toBe(2);
        expect(retries).toBe(1);
        expect((await read('chunks/aa/03')).equals(body)).toBe(true);
        expect(await uploadsLeft()).toEqual([]);
      });

      it('ifAbsent multipart: NoSuchUpload on a first complete (nothing lost) is a failure naming the key; the upload is aborted', async () => {
        proxy.answerNext(COMPLETE, 404, 'NoSuchUpload');
        const e = await lossy.put('chunks/aa/03', contractBytes(2 * 5 * 1024 * 1024 + 1, 12), { ifAbsent: true, checkedAbsent: true }).then(
          () => undefined,
          (x: unknown) => x,
        );
        expect(e).toBeInstanceOf(RepoError);
        expect(e).toMatchObject({ reason: 'backend', key: 'chunks/aa/03', s3Code: 'NoSuchUpload' });
        expect(proxy.applied).toBe(1);
        expect(await uploadsLeft()).toEqual([]);
        await expect(raw.send(new HeadObjectCommand({ Bucket: loc.bucket, Key: `${loc.prefix}/chunks/aa/03` }))).rejects.toMatchObject({ $metadata: { httpStatusCode: 404 } });
      });

      it('ifAbsent multipart, a lost complete answer, the retry answered 412, the object not ours (another writer’s ETag): resolves false, leaves it', async () => {
        const Key = `${loc.prefix}/chunks/aa/03`;
        // The first complete never reaches the server; another writer stores the key; the retry is told 412.
        proxy.loseNext(COMPLETE, {
          refuse: true,
          before: async () => {
            await raw.send(new PutObjectCommand({ Bucket: loc.bucket, Key, Body: Buffer.from('another writer') }));
          },
        });
        proxy.answerNext(COMPLETE, 412, 'PreconditionFailed');
        expect(await lossy.put('chunks/aa/03', contractBytes(2 * 5 * 1024 * 1024 + 5, 13), { ifAbsent: true, checkedAbsent: true })).toBe(false);
        expect(proxy.applied).toBe(2);
        expect((await read('chunks/aa/03')).toString()).toBe('another writer');
        expect(await uploadsLeft()).toEqual([]);
      });

      it('without ifAbsent a lost answer is simply retried: resolves true, the object is whole', async () => {
        const body = contractBytes(5000, 10);
        proxy.loseNext(/^PUT \S*\/config[ ?]/);
        expect(await lossy.put('config', body)).toBe(true);
        expect(proxy.applied).toBe(1);
        expect((await read('config')).equals(body)).toBe(true);
      });
    });

    it('lists across pages and deletes in batches of at most 1000', async () => {
      // Pages of 50 (S3 serves up to 1000; radosgw puts run at ~50/s here, so
      // 120 objects in 3 pages instead of 1000+ objects); deletes of 1300
      // keys, present ones in both batches, the absent ones costing nothing.
      const n = 120;
      const keys = Array.from({ length: n }, (_, i) => `p/${String(i).padStart(5, '0')}`);
      await Promise.all(keys.map((k) => b.put(k, Buffer.from(k))));
      const paged = await createS3Backend(loc.bucket, loc.prefix, { listPageSize: 50 });
      const send = jest.spyOn(S3Client.prototype, 'send');
      // Present keys at positions 0, 11, 22, ... 1298: 119 of them, 28 past the first batch.
      const del = Array.from({ length: 1300 }, (_, i) => (i % 11 === 0 ? keys[i / 11]! : `p/absent-${i}`));
      const deleted = new Set(del.filter((k) => !k.includes('absent')));
      try {
        const listed = (await collect(paged.list('p/'))).map((o) => o.key).sort();
        expect(listed).toEqual(keys);
        expect(send.mock.calls.filter(([c]) => c instanceof ListObjectsV2Command).length).toBe(3);
        send.mockClear();
        expect(deleted.size).toBe(119);
        expect(del.slice(1000).some((k) => deleted.has(k))).toBe(true);
        await paged.delete(del);
        const batches = send.mock.calls.filter(([c]) => c instanceof DeleteObjectsCommand).map(([c]) => (c as DeleteObjectsCommand).input.Delete!.Objects!.length);
        expect(batches).toEqual([1000, 300]);
      } finally {
        send.mockRestore();
        await paged.close();
      }
      const left = (await collect(b.list('p/'))).map((o) => o.key).sort();
      expect(left).toEqual(keys.filter((k) => !deleted.has(k)));
    });

    it('an absent bucket is RepoError config; wrong keys are RepoError backend naming the S3 code, not retried', async () => {
      const nb = await createS3Backend('dmthin-no-such-bucket', 'x');
      const e1 = await nb.get('k').then(() => null, (e: unknown) => e);
      expect(e1).toBeInstanceOf(RepoError);
      expect(e1).toMatchObject({ reason: 'config', key: 'k' });
      await nb.close();
      const saved = process.env.AWS_SECRET_ACCESS_KEY;
      process.env.AWS_SECRET_ACCESS_KEY = 'wrong-secret';
      let retries = 0;
      // The SDK reads the environment's credentials at the first request.
      const wb = await createS3Backend(loc.bucket, loc.prefix, { onRetry: () => retries++ });
      const e2 = await wb.put('chunks/k', Buffer.from('x')).then(() => null, (e: unknown) => e);
      process.env.AWS_SECRET_ACCESS_KEY = saved;
      expect(e2).toBeInstanceOf(RepoError);
      expect(e2).toMatchObject({ reason: 'backend', key: 'chunks/k', s3Code: 'SignatureDoesNotMatch', code: 'EIO' });
      expect((e2 as Error).message).toContain('chunks/k');
      expect(retries).toBe(0);
      await wb.close();
    });

    it('invalid bucket names and options are RepoError config', async () => {
      await expect(createS3Backend('UPPER', 'x')).rejects.toMatchObject({ reason: 'config' });
      await expect(createS3Backend('ok-bucket', 'a/../b')).rejects.toMatchObject({ reason: 'config' });
      await expect(createS3Backend('ok-bucket', 'x', { concurrency: 0 })).rejects.toMatchObject({ reason: 'config' });
    });

    it('takes credentials from a profile in the AWS config files (AWS_PROFILE, no key variables)', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'dmthin-aws-'));
      writeFileSync(join(dir, 'config'), `[profile dmthin-test]\nregion = ${s3.env.AWS_REGION}\n`);
      writeFileSync(join(dir, 'credentials'), `[dmthin-test]\naws_access_key_id = ${s3.env.AWS_ACCESS_KEY_ID}\naws_secret_access_key = ${s3.env.AWS_SECRET_ACCESS_KEY}\n`);
      const names = ['AWS_PROFILE', 'AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_REGION', 'AWS_DEFAULT_REGION'];
      const saved = Object.fromEntries(names.map((n) => [n, process.env[n]]));
      for (const n of names) delete process.env[n];
      Object.assign(process.env, { AWS_PROFILE: 'dmthin-test', AWS_CONFIG_FILE: join(dir, 'config'), AWS_SHARED_CREDENTIALS_FILE: join(dir, 'credentials') });
      try {
        const p = await createS3Backend(loc.bucket, loc.prefix);
        await p.put('from-profile', Buffer.from('p'));
        expect((await p.get('from-profile')).toString()).toBe('p');
        await p.close();
      } finally {
        for (const n of names) {
          if (saved[n] === undefined) delete process.env[n];
          else process.env[n] = saved[n];
        }
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('bounded concurrency: at most `concurrency` requests in flight', async () => {
      const c = await createS3Backend(loc.bucket, loc.prefix, { concurrency: 3 });
      // Count sockets the backend's agent opens: with keep-alive and
      // maxSockets = concurrency, never more than 3 connections at once.
      const net = await import('node:net');
      let open = 0;
      let peak = 0;
      const orig = net.Socket.prototype.connect;
      const spy = jest.spyOn(net.Socket.prototype, 'connect').mockImplementation(function (this: import('node:net').Socket, ...args: unknown[]) {
        open++;
        peak = Math.max(peak, open);
        this.once('close', () => open--);
        return (orig as (...a: unknown[]) => import('node:net').Socket).apply(this, args);
      });
      try {
        await Promise.all(Array.from({ length: 40 }, (_, i) => c.put(`cc/${i}`, contractBytes(200000, i + 1))));
      } finally {
        spy.mockRestore();
        await c.close();
      }
      expect(peak).toBeGreaterThan(0);
      expect(peak).toBeLessThanOrEqual(3);
    });
  });
});

describe('S3 backend: configuration, and the SDK Node-version warning (no server needed)', () => {
  // Runs dist/ (built by `npm test` first) in a child so the SDK's
  // once-per-process warning state is fresh.
  const dist = join(REPO_ROOT, 'dist', 'repo', 's3-backend.js');
  const run = (code: string): { stdout: string; stderr: string; status: number | null } => {
    const env: NodeJS.ProcessEnv = { ...process.env, AWS_REGION: 'us-east-1', AWS_ENDPOINT_URL: 'http://127.0.0.1:9' };
    delete env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED;
    const r = spawnSync(process.execPath, ['-e', code], { env, encoding: 'utf8', cwd: REPO_ROOT, timeout: 60_000 });
    return { stdout: r.stdout, stderr: r.stderr, status: r.status };
  };
  const major = Number(process.versions.node.split('.')[0]);

  it('the bare SDK prints it on this Node (the control)', () => {
    const r = run(`const { S3Client } = require('@aws-sdk/client-s3'); new S3Client({ region: 'us-east-1' });`);
    expect(r.status).toBe(0);
    if (major < 22) expect(r.stderr).toContain('NodeVersionSupportWarning');
    else expect(r.stderr).not.toContain('NodeVersionSupportWarning');
  });

  it('no region anywhere: RepoError config naming AWS_REGION; with an endpoint, us-east-1 is assumed', () => {
    const code = (endpoint: boolean): string => `
      for (const n of ['AWS_REGION', 'AWS_DEFAULT_REGION', 'AWS_PROFILE', 'AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_S3']) delete process.env[n];
      process.env.AWS_CONFIG_FILE = '/nonexistent/aws-config';
      process.env.AWS_SHARED_CREDENTIALS_FILE = '/nonexistent/aws-credentials';
      ${endpoint ? "process.env.AWS_ENDPOINT_URL = 'http://127.0.0.1:9';" : ''}
      const { createS3Backend } = require(${JSON.stringify(dist)});
      createS3Backend('some-bucket', 'p').then(async (b) => { console.log('ok ' + b.location); await b.close(); },
        (e) => console.log(JSON.stringify({ name: e.name, reason: e.reason, message: e.message })));`;
    const none = spawnSync(process.execPath, ['-e', code(false)], { encoding: 'utf8', cwd: REPO_ROOT });
    const out = JSON.parse(none.stdout.trim()) as { name: string; reason: string; message: string };
    expect(out).toMatchObject({ name: 'RepoError', reason: 'config' });
    expect(out.message).toContain('AWS_REGION');
    const withEndpoint = spawnSync(process.execPath, ['-e', code(true)], { encoding: 'utf8', cwd: REPO_ROOT });
    expect(withEndpoint.stdout.trim()).toBe('ok s3://some-bucket/p');
  });

  it('an endpoint that takes the connection and never answers: RepoError backend after responseTimeoutMs per attempt, no SDK warning', () => {
    const r = run(
      `const net = require('node:net');
       const { createS3Backend } = require(${JSON.stringify(dist)});
       const server = net.createServer((sock) => sock.on('error', () => {})); // reads the request, says nothing
       server.listen(0, '127.0.0.1', async () => {
         process.env.AWS_ENDPOINT_URL = 'http://127.0.0.1:' + server.address().port;
         process.env.AWS_ACCESS_KEY_ID = 'k'; process.env.AWS_SECRET_ACCESS_KEY = 's';
         const retries = [];
         const b = await createS3Backend('some-bucket', 'p', { responseTimeoutMs: 400, maxAttempts: 2, baseDelayMs: 0, maxDelayMs: 0, onRetry: (x) => retries.push(x.attempt) });
         const t = Date.now();
         try { await b.stat('k'); console.log('resolved'); }
         catch (e) { console.log(JSON.stringify({ name: e.name, reason: e.reason, message: e.message, ms: Date.now() - t, retries })); }
         await b.close(); server.close(); process.exit(0);
       });`,
    );
    expect(r.status).toBe(0);
    expect(r.stderr).not.toContain('@smithy');
    const out = JSON.parse(r.stdout.trim()) as { name: string; reason: string; message: string; ms: number; retries: number[] };
    expect(out).toMatchObject({ name: 'RepoError', reason: 'backend', retries: [1] });
    expect(out.message).toMatch(/TimeoutError|timed out|exceeded/);
    // Two attempts of 400 ms each (the default is 120 s: it used to wait for ever).
    expect(out.ms).toBeGreaterThanOrEqual(700);
    expect(out.ms).toBeLessThan(15_000);
  });

  it('an upload answered late, and a reader that pauses a body, are not cut (found by an outside hunt)', () => {
    // The server answers a PUT 1.5 s after its 64 KiB body (within the 8 s its size allows at 8 KiB/s; the
    // client's socket is silent meanwhile, as it is while a slow link drains a chunk sent as one write), and
    // sends a GET's 4 MiB body at once while the reader pauses 1.5 s after its first piece.
    const r = run(
      `const net = require('node:net'); const crypto = require('node:crypto');
       const { createS3Backend } = require(${JSON.stringify(dist)});
       const PUT = crypto.randomBytes(65536), GET = crypto.randomBytes(4 << 20);
       const server = net.createServer((sock) => {
         sock.on('error', () => {});
         let buf = Buffer.alloc(0);
         sock.on('data', (d) => {
           buf = Buffer.concat([buf, d]);
           const at = buf.indexOf('\\r\\n\\r\\n');
           if (at < 0) return;
           const text = buf.subarray(0, at).toString();
           const m = /content-length: *(\\d+)/i.exec(text);
           const need = at + 4 + (m ? Number(m[1]) : 0);
           if (buf.length < need) return;
           const body = buf.subarray(at + 4, need);
           buf = buf.subarray(need);
           if (text.startsWith('PUT')) {
             const md5 = crypto.createHash('md5').update(body).digest('hex');
             setTimeout(() => sock.write('HTTP/1.1 200 OK\\r\\nETag: "' + md5 + '"\\r\\nContent-Length: 0\\r\\n\\r\\n'), 1500);
           } else {
             sock.write('HTTP/1.1 200 OK\\r\\nETag: "e"\\r\\nContent-Length: ' + GET.length + '\\r\\n\\r\\n');
             sock.write(GET);
           }
         });
       });
       server.listen(0, '127.0.0.1', async () => {
         process.env.AWS_ENDPOINT_URL = 'http://127.0.0.1:' + server.address().port;
         process.env.AWS_ACCESS_KEY_ID = 'k'; process.env.AWS_SECRET_ACCESS_KEY = 's';
         const b = await createS3Backend('some-bucket', 'p', { responseTimeoutMs: 400, maxAttempts: 1 });
         const out = {};
         let t = Date.now();
         try { out.put = await b.put('k', PUT); } catch (e) { out.put = e.message; }
         out.putMs = Date.now() - t;
         try {
           const parts = [];
           for await (const p of b.getStream('k')) { if (parts.length === 0) await new Promise((r) => setTimeout(r, 1500)); parts.push(p); }
           out.get = Buffer.concat(parts).equals(GET);
         } catch (e) { out.get = e.message; }
         console.log(JSON.stringify(out));
         await b.close(); server.close(); process.exit(0);
       });`,
    );
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout.trim()) as { put: unknown; putMs: number; get: unknown };
    expect(out).toMatchObject({ put: true, get: true });
    expect(out.putMs).toBeGreaterThanOrEqual(1400);
  });

  it('a body that stops arriving mid-way is cut after responseTimeoutMs and resumed where it stopped; one that always stalls fails (in stop 39 it hung); a resume answered with the whole object is refused', () => {
    // The first GET's body stops after 1 MiB (the connection stays open, silent); a resumed GET (Range) gets
    // the rest. Object 'dead' stalls every time.
    const r = run(
      `const net = require('node:net'); const crypto = require('node:crypto');
       const { createS3Backend } = require(${JSON.stringify(dist)});
       const OBJ = crypto.randomBytes(4 << 20);
       let gets = 0;
       const server = net.createServer((sock) => {
         sock.on('error', () => {});
         let buf = '';
         sock.on('data', (d) => {
           buf += d.toString('latin1');
           const at = buf.indexOf('\\r\\n\\r\\n');
           if (at < 0) return;
           const text = buf.slice(0, at);
           buf = buf.slice(at + 4);
           gets++;
           const range = /range: *bytes=(\\d+)-/i.exec(text);
           if (range && !text.includes('/norange')) {
             const from = Number(range[1]);
             sock.write('HTTP/1.1 206 Partial Content\\r\\nETag: "e"\\r\\nContent-Range: bytes ' + from + '-' + (OBJ.length - 1) + '/' + OBJ.length + '\\r\\nContent-Length: ' + (OBJ.length - from) + '\\r\\n\\r\\n');
             if (text.includes('/dead')) sock.write(OBJ.subarray(from, from + 1000)); // and nothing more
             else sock.write(OBJ.subarray(from));
           } else {
             sock.write('HTTP/1.1 200 OK\\r\\nETag: "e"\\r\\nContent-Length: ' + OBJ.length + '\\r\\n\\r\\n');
             sock.write(OBJ.subarray(0, 1 << 20)); // then nothing
           }
         });
       });
       server.listen(0, '127.0.0.1', async () => {
         process.env.AWS_ENDPOINT_URL = 'http://127.0.0.1:' + server.address().port;
         process.env.AWS_ACCESS_KEY_ID = 'k'; process.env.AWS_SECRET_ACCESS_KEY = 's';
         const retries = [];
         const b = await createS3Backend('some-bucket', 'p', { responseTimeoutMs: 400, maxAttempts: 2, baseDelayMs: 0, maxDelayMs: 0, onRetry: (x) => retries.push(x.op) });
         const out = {};
         const t = Date.now();
         try { out.get = (await b.get('k', { maxBytes: 8 << 20 })).equals(OBJ); } catch (e) { out.get = e.message; }
         out.getMs = Date.now() - t;
         out.gets = gets;
         try { await b.get('dead', { maxBytes: 8 << 20 }); out.dead = 'resolved'; } catch (e) { out.dead = { name: e.name, reason: e.reason, message: e.message }; }
         try { await b.get('norange', { maxBytes: 8 << 20 }); out.norange = 'resolved'; } catch (e) { out.norange = { name: e.name, reason: e.reason, message: e.message }; }
         out.retries = retries;
         console.log(JSON.stringify(out));
         await b.close(); server.close(); process.exit(0);
       });`,
    );
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout.trim()) as { get: unknown; getMs: number; gets: number; dead: { name: string; reason: string; message: string }; norange: { name: string; reason: string; message: string }; retries: string[] };
    expect(out.get).toBe(true);
    expect(out.gets).toBe(2);
    expect(out.getMs).toBeGreaterThanOrEqual(350);
    expect(out.getMs).toBeLessThan(15_000);
    expect(out.dead).toMatchObject({ name: 'RepoError', reason: 'backend' });
    expect(out.dead.message).toMatch(/stopped arriving for 400 ms/);
    // A server that answers the resumed get with the whole object: refused, not spliced in.
    expect(out.norange).toMatchObject({ name: 'RepoError', reason: 'backend' });
    expect(out.norange.message).toMatch(/from byte 1048576 with the whole object: it does not honour Range requests/);
    expect(out.retries).toEqual(['get (resumed)', 'get (resumed)', 'get (resumed)']);
  }, 60_000);

  it('createS3Backend keeps it off stderr, other warnings still print, the variable is left as it was', () => {
    const r = run(
      `const { createS3Backend } = require(${JSON.stringify(dist)});
       (async () => {
         const b = await createS3Backend('some-bucket', 'p');
         const b2 = await createS3Backend('some-bucket', 'q');
         process.emitWarning('a warning of the application', 'OtherWarning');
         if (process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED !== undefined) throw new Error('variable left set');
         await b.close(); await b2.close();
       })().catch((e) => { console.error(e); process.exit(1); });`,
    );
    expect(r.stderr).not.toContain('NodeVersionSupportWarning');
    expect(r.stderr).toContain('OtherWarning: a warning of the application');
    expect(r.status).toBe(0);
  });
});
