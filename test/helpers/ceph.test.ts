// The S3 test gate (describeS3 in ceph.ts): without Ceph, S3 tests are skipped
// loudly, or fail under DMTHIN_REQUIRE_S3=1 (as CI sets).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from './fixtures';

describe('S3 gate', () => {
  const jest = join(REPO_ROOT, 'node_modules', 'jest', 'bin', 'jest.js');
  const runSample = (env: Record<string, string>) => {
    const empty = mkdtempSync(join(tmpdir(), 'no-ceph-'));
    try {
      return spawnSync(process.execPath, [jest, '--rootDir', REPO_ROOT, '--testMatch', '**/test/helpers/s3-gate.sample.ts', '--verbose'], {
        cwd: REPO_ROOT,
        encoding: 'utf8',
        env: { ...process.env, DMTHIN_CEPH_DIR: empty, ...env },
      });
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  };

  it('skips loudly when Ceph is missing', () => {
    const r = runSample({ DMTHIN_REQUIRE_S3: '' });
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/WARNING: SKIPPING S3 tests "gated S3 block": ceph-mon, .* not found/);
    expect(r.stderr).toMatch(/gated S3 block \[SKIPPED: CEPH MISSING - ceph-mon/);
    expect(r.stderr).toMatch(/○ skipped inner test/);
    expect(r.stderr).toMatch(/1 passed/);
  });

  it('fails when DMTHIN_REQUIRE_S3=1 and Ceph is missing', () => {
    const r = runSample({ DMTHIN_REQUIRE_S3: '1' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/S3 tests required but Ceph is missing/);
    expect(r.stderr).toMatch(/1 failed/);
  });
});
