import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  REPO_ROOT, fixture, fixtureFile, fixtureImage, fixtureXml, itOracle, largeImage, listFixtures, loadManifest,
  oracleAvailable, oracleVersion, runOracle,
} from './fixtures';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('fixture manifest', () => {
  it('lists the committed fixtures', () => {
    const names = loadManifest().fixtures.map((f) => f.name);
    expect(names).toEqual(expect.arrayContaining(['empty', 'basic', 'snapshots', 'deep-tree', 'many-devices', 'metadata-snap']));
    expect(listFixtures('metadata-snap').map((f) => f.name)).toEqual(['metadata-snap', 'metadata-snap-diverged']);
    expect(() => fixture('nope')).toThrow(/no fixture/);
  });

  it.each(listFixtures().map((f) => f.name))('%s: image and xml match size and sha256', (name) => {
    const f = fixture(name);
    const img = fixtureImage(name);
    expect(img.length).toBe(f.size);
    expect(sha(img)).toBe(f.sha256);
    expect(sha(Buffer.from(fixtureXml(name)))).toBe(f.xmlSha256);
  });

  it('covers the required shapes', () => {
    const all = listFixtures();
    expect(all.some((f) => f.depth.bottomMax >= 3)).toBe(true);
    expect(all.some((f) => f.depth.details >= 2 && f.depth.top >= 2)).toBe(true);
    expect([...new Set(all.map((f) => f.dataBlockSize))]).toEqual(expect.arrayContaining([128, 1024, 2097152]));
    expect(all.some((f) => f.nrDataBlocks > 16320)).toBe(true);
    expect(fixture('metadata-snap').heldRoot).toBeGreaterThan(0);
  });

  it('decompresses to a temp file and cleans up', () => {
    const t = fixtureFile('basic');
    expect(readFileSync(t.path).length).toBe(fixture('basic').size);
    t.cleanup();
    expect(existsSync(t.path)).toBe(false);
  });
});

describe('oracle gate', () => {
  const jest = join(REPO_ROOT, 'node_modules', 'jest', 'bin', 'jest.js');
  const runSample = (env: Record<string, string>) => {
    const empty = mkdtempSync(join(tmpdir(), 'no-oracle-'));
    try {
      return spawnSync(
        process.execPath,
        [jest, '--rootDir', REPO_ROOT, '--testMatch', '**/test/helpers/oracle-gate.sample.ts', '--verbose'],
        { cwd: REPO_ROOT, encoding: 'utf8', env: { ...process.env, DMTHIN_ORACLE_DIR: empty, ...env } },
      );
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  };

  it('skips loudly when the tools are missing', () => {
    const r = runSample({ DMTHIN_REQUIRE_ORACLE: '' });
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/WARNING: SKIPPING oracle tests "gated block"/);
    expect(r.stderr).toMatch(/WARNING: SKIPPING oracle tests "gated test"/);
    expect(r.stderr).toMatch(/○ skipped inner test/);
    expect(r.stderr).toMatch(/gated block \[SKIPPED: ORACLE MISSING - thin_check, .* not found/);
    expect(r.stderr).toMatch(/○ skipped gated test \[SKIPPED: ORACLE MISSING/);
    expect(r.stderr).toMatch(/1 passed/);
  });

  it('fails when DMTHIN_REQUIRE_ORACLE=1 and the tools are missing', () => {
    const r = runSample({ DMTHIN_REQUIRE_ORACLE: '1' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/oracle required but missing/);
    expect(r.stderr).toMatch(/2 failed/);
  });

  itOracle('reports the installed version', () => {
    expect(oracleAvailable()).toBe(true);
    expect(oracleVersion()).toMatch(/^\d+\.\d+\.\d+/);
    expect(runOracle('thin_dump', ['-V']).status).toBe(0);
  });
});

describe('large images', () => {
  itOracle('generates and then reuses a cached image', () => {
    const a = largeImage(20000);
    expect(a.mappings).toBeGreaterThanOrEqual(20000);
    expect(a.devices).toBe(4);
    expect(existsSync(a.path)).toBe(true);
    const b = largeImage(20000);
    expect(b.cached).toBe(true);
    expect(b.sha256).toBe(a.sha256);
  });
});
