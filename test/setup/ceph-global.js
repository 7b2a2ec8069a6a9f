// jest globalSetup/globalTeardown for the S3 tests (test/helpers/ceph.ts):
// setup only makes the run's directory (the first describeS3 block starts the
// Ceph cluster in it, so a run without S3 tests starts nothing); teardown stops
// the cluster if one was started and removes the directory.
const { spawnSync } = require('node:child_process');
const { existsSync, mkdtempSync, rmSync } = require('node:fs');
const { tmpdir } = require('node:os');
const { join } = require('node:path');

const SCRIPT = join(__dirname, '..', '..', 'scripts', 'ceph', 'test-cluster.mjs');

async function setup() {
  // Workers are forked after globalSetup and inherit this variable.
  process.env.DMTHIN_CEPH_RUN_DIR = mkdtempSync(join(tmpdir(), 'dmthin-ceph-run-'));
}

async function teardown() {
  const dir = process.env.DMTHIN_CEPH_RUN_DIR;
  if (!dir) return;
  const cluster = join(dir, 'cluster');
  if (existsSync(join(cluster, 'cluster.json'))) {
    const r = spawnSync(process.execPath, [SCRIPT, 'stop', cluster], { stdio: 'inherit' });
    if (r.status !== 0) process.stderr.write(`ceph-global: stopping the test cluster in ${cluster} failed\n`);
  }
  rmSync(dir, { recursive: true, force: true });
}

module.exports = { setup, teardown };
