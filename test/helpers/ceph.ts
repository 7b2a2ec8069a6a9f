// A real S3 endpoint for tests: Debian's Ceph (mon, OSD, radosgw) started by
// scripts/ceph/test-cluster.mjs. One cluster serves the whole jest run: the
// globalSetup (test/setup/ceph-global.js) only makes a run directory, the
// first describeS3 block that runs starts the cluster in it (under a lock
// file, other workers wait and share it) and the globalTeardown stops it. So a
// jest run without S3 tests pays nothing, and one with several S3 files pays
// the start once. Outside that setup (DMTHIN_CEPH_RUN_DIR unset, or
// DMTHIN_CEPH_PER_FILE=1) each file starts and stops its own cluster.
//
// Without Ceph installed the blocks are skipped loudly, or fail under
// DMTHIN_REQUIRE_S3=1 (as CI sets), like describeOracle in fixtures.ts.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { REPO_ROOT } from './fixtures';

export const CLUSTER_SCRIPT = join(REPO_ROOT, 'scripts', 'ceph', 'test-cluster.mjs');
const CEPH_TOOLS = ['ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin', 'monmaptool', 'ceph'];

/** What the cluster script prints. */
export interface CephClusterInfo {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  dir: string;
  startMs: number;
}

/** What a describeS3 block's tests get (filled in by its beforeAll: read it inside tests). */
export interface S3TestContext {
  /** http://127.0.0.1:PORT of this block's gateway. */
  endpoint: string;
  /** A bucket made for this block. */
  bucket: string;
  /** The AWS_* variables that reach it (also set in process.env while the block runs). */
  env: Record<string, string>;
  /** A fresh, empty `s3://bucket/prefix` on each call. */
  location(): { url: string; bucket: string; prefix: string };
  /** The cluster underneath (dir, start time). */
  cluster: CephClusterInfo;
  /** Stops this block's own gateway (only with `ownGateway`). */
  stopGateway(): Promise<void>;
  /** Starts it again on the same port and waits until it answers. */
  startGateway(): Promise<void>;
}

/** Path of a Ceph tool: only in $DMTHIN_CEPH_DIR when set (an empty dir simulates no Ceph), else PATH and the sbin dirs. */
function which(tool: string): string | null {
  const only = process.env.DMTHIN_CEPH_DIR;
  for (const d of only ? [only] : [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/bin', '/sbin']) {
    if (d && existsSync(join(d, tool))) return join(d, tool);
  }
  return null;
}

/** Why Ceph cannot be used here, or '' when it can. */
export function cephMissing(): string {
  const missing = CEPH_TOOLS.filter((t) => !which(t));
  return missing.length ? `${missing.join(', ')} not found (apt-get install --no-install-recommends ceph-mon ceph-mgr ceph-osd radosgw ceph-common)` : '';
}

function script(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [CLUSTER_SCRIPT, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`test-cluster.mjs ${args.join(' ')}: exit ${code}: ${err.trim()}`))));
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Runs `fn` holding an exclusive lock file (workers of one jest run share the cluster). */
async function withLock<T>(file: string, fn: () => Promise<T>): Promise<T> {
  const end = Date.now() + 180000;
  for (;;) {
    try {
      closeSync(openSync(file, 'wx'));
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      if (Date.now() > end) throw new Error(`timed out waiting for ${file}`);
      await sleep(100);
    }
  }
  try {
    return await fn();
  } finally {
    unlinkSync(file);
  }
}

/** The run's shared cluster, started by the first caller. */
async function sharedCluster(runDir: string): Promise<CephClusterInfo> {
  const infoFile = join(runDir, 'info.json');
  const failFile = join(runDir, 'failed.txt');
  return withLock(join(runDir, 'lock'), async () => {
    if (existsSync(failFile)) throw new Error(readFileSync(failFile, 'utf8'));
    if (existsSync(infoFile)) return JSON.parse(readFileSync(infoFile, 'utf8')) as CephClusterInfo;
    try {
      const out = await script(['start', join(runDir, 'cluster')]);
      writeFileSync(infoFile, out);
      return JSON.parse(out) as CephClusterInfo;
    } catch (e) {
      writeFileSync(failFile, (e as Error).message);
      throw e;
    }
  });
}

/**
 * A plain SDK client on the block's gateway (for looking behind a backend).
 * Built with the SDK's Node-version warning switched off, as the backend does.
 */
export function s3Client(s3: Pick<S3TestContext, 'endpoint' | 'env'>): S3Client {
  const VAR = 'AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED';
  const before = process.env[VAR];
  process.env[VAR] = 'true';
  try {
    return new S3Client({
      endpoint: s3.endpoint,
      region: s3.env.AWS_REGION,
      forcePathStyle: true,
      credentials: { accessKeyId: s3.env.AWS_ACCESS_KEY_ID!, secretAccessKey: s3.env.AWS_SECRET_ACCESS_KEY! },
    });
  } finally {
    if (before === undefined) delete process.env[VAR];
    else process.env[VAR] = before;
  }
}

const requireS3 = (): boolean => process.env.DMTHIN_REQUIRE_S3 === '1';
const warned = new Set<string>();

/**
 * describe() for tests against a real S3 endpoint. `fn` receives the block's
 * context (its fields are set by the time tests run). `ownGateway`: the block
 * gets a radosgw of its own on the shared cluster, which its tests may stop
 * and restart without disturbing other files.
 */
export function describeS3(name: string, fn: (s3: S3TestContext) => void, opts: { ownGateway?: boolean } = {}): void {
  const why = cephMissing();
  if (why) {
    if (requireS3()) {
      describe(name, () => {
        it('requires Ceph (DMTHIN_REQUIRE_S3=1)', () => {
          throw new Error(`S3 tests required but Ceph is missing: ${why}`);
        });
      });
    } else {
      if (!warned.has(name)) {
        warned.add(name);
        process.stderr.write(`\n*** WARNING: SKIPPING S3 tests "${name}": ${why}. Set DMTHIN_REQUIRE_S3=1 to make this a failure. ***\n\n`);
      }
      describe.skip(`${name} [SKIPPED: CEPH MISSING - ${why}]`, () => fn({} as S3TestContext));
    }
    return;
  }
  const ctx = {} as S3TestContext;
  let ownDir: string | undefined;
  let gateway: string | undefined;
  let counter = 0;
  const saved: Record<string, string | undefined> = {};
  describe(name, () => {
    beforeAll(async () => {
      const runDir = process.env.DMTHIN_CEPH_RUN_DIR;
      let cluster: CephClusterInfo;
      if (runDir && process.env.DMTHIN_CEPH_PER_FILE !== '1') {
        cluster = await sharedCluster(runDir);
      } else {
        ownDir = mkdtempSync(join(tmpdir(), 'dmthin-ceph-'));
        cluster = JSON.parse(await script(['start', ownDir])) as CephClusterInfo;
      }
      let endpoint = cluster.endpoint;
      if (opts.ownGateway) {
        gateway = `g${randomBytes(4).toString('hex')}`;
        endpoint = (JSON.parse(await script(['start-rgw', cluster.dir, gateway])) as CephClusterInfo).endpoint;
      }
      const env = {
        AWS_ENDPOINT_URL: endpoint,
        AWS_ENDPOINT_URL_S3: endpoint,
        AWS_REGION: cluster.region,
        AWS_ACCESS_KEY_ID: cluster.accessKeyId,
        AWS_SECRET_ACCESS_KEY: cluster.secretAccessKey,
      };
      for (const [k, v] of Object.entries(env)) {
        saved[k] = process.env[k];
        process.env[k] = v;
      }
      const bucket = `dmthin-${randomBytes(6).toString('hex')}`;
      const client = s3Client({ endpoint, env });
      try {
        await client.send(new CreateBucketCommand({ Bucket: bucket }));
      } finally {
        client.destroy();
      }
      Object.assign(ctx, {
        endpoint,
        bucket,
        env,
        cluster,
        location: () => {
          const prefix = `t${++counter}-${randomBytes(3).toString('hex')}`;
          return { url: `s3://${bucket}/${prefix}`, bucket, prefix };
        },
        stopGateway: async () => {
          if (!gateway) throw new Error('describeS3: stopGateway needs { ownGateway: true }');
          await script(['stop-rgw', cluster.dir, gateway]);
        },
        startGateway: async () => {
          if (!gateway) throw new Error('describeS3: startGateway needs { ownGateway: true }');
          await script(['start-rgw', cluster.dir, gateway]);
        },
      });
    }, 180000);
    afterAll(async () => {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
      if (gateway && ctx.cluster && !ownDir) await script(['stop-rgw', ctx.cluster.dir, gateway]).catch(() => undefined);
      if (ownDir) {
        await script(['stop', ownDir]);
        rmSync(ownDir, { recursive: true, force: true });
      }
    }, 60000);
    fn(ctx);
  });
}
