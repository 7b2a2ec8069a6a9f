/**
 * The API reference builds without a single TypeDoc warning: every exported
 * name and member documented, no public signature naming a type the package
 * does not export, no broken {@link}. Runs the project's typedoc.json with
 * --treatWarningsAsErrors into a temporary folder (docs/api/ is not touched).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ROOT = join(__dirname, '..', '..');
const TYPEDOC = join(ROOT, 'node_modules', 'typedoc', 'bin', 'typedoc');

describe('API reference (TypeDoc)', () => {
  test('typedoc.json asks for the validations this test relies on', () => {
    const cfg = JSON.parse(readFileSync(join(ROOT, 'typedoc.json'), 'utf8'));
    expect(cfg.entryPoints).toEqual(['src/index.ts', 'src/unstable.ts']);
    expect(cfg.validation).toEqual({ notExported: true, invalidLink: true, notDocumented: true });
    expect(cfg.excludeInternal).toBe(true);
  });

  test('builds with warnings treated as errors', () => {
    const out = mkdtempSync(join(tmpdir(), 'dmthin-api-docs-'));
    try {
      const r = spawnSync(process.execPath, [TYPEDOC, '--treatWarningsAsErrors', '--out', out], {
        cwd: ROOT,
        encoding: 'utf8',
        env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' },
        timeout: 180_000,
      });
      const log = `${r.stdout}${r.stderr}`;
      expect({ status: r.status, warnings: log.split('\n').filter((l) => /\[(warning|error)\]/.test(l)) }).toEqual({ status: 0, warnings: [] });
      // Not an empty site: the main classes of both entry points have pages.
      expect(existsSync(join(out, 'index.html'))).toBe(true);
      const pages = ['classes/dmthin.ThinMetadata.html', 'classes/dmthin.ThinPool.html', 'classes/dmthin_unstable.BtreeNode.html'];
      for (const p of pages) expect({ p, exists: existsSync(join(out, p)) }).toEqual({ p, exists: true });
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});
