/**
 * targetIdentity: what a job's state records about its target beyond the
 * path, so that a path now leading elsewhere is not taken as the same target.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultJobStateFile, targetIdentity } from '../../src/output/file';
import { testAsRoot } from '../helpers/root';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'dmthin-target-id-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test('a file: the same through a symlink, another once removed and made again at its path; nothing there is null', () => {
  const f = join(dir, 'img');
  writeFileSync(f, 'a');
  symlinkSync(f, join(dir, 'link'));
  const id = targetIdentity(f);
  expect(id).toMatch(/^file:\d+:\d+:\d+$/);
  expect(targetIdentity(join(dir, 'link'))).toBe(id);
  writeFileSync(f, 'b'); // rewritten in place: the same file
  expect(targetIdentity(f)).toBe(id);
  rmSync(f);
  expect(targetIdentity(f)).toBeNull();
  writeFileSync(f, 'a');
  expect(targetIdentity(f)).not.toBe(id);
});

testAsRoot('a block device without a dm or loop entry in /sys: by its number (major and minor decoded from dev_t)', () => {
  // Numbers no machine here has: /sys/dev/block has no entry for them.
  const mk = (name: string, major: number, minor: number): string => {
    const p = join(dir, name);
    execFileSync('mknod', [p, 'b', String(major), String(minor)]);
    return p;
  };
  const a = mk('a', 240, 1048000);
  const b = mk('b', 240, 1048000);
  const c = mk('c', 240, 1048001);
  expect(targetIdentity(a)).toBe('block:240:1048000');
  expect(targetIdentity(b)).toBe(targetIdentity(a));
  expect(targetIdentity(c)).toBe('block:240:1048001');
});

describe('defaultJobStateFile: one state file per target, whichever path names it', () => {
  test('a file: beside the file a symlink leads to; a state kept under the old name (the path as given) is still found', () => {
    const d = mkdtempSync(join(dir, 'state-'));
    const f = join(d, 'vol.img');
    writeFileSync(f, 'x');
    symlinkSync(f, join(d, 'alias.img'));
    expect(defaultJobStateFile(join(d, 'alias.img'), false, '/unused', '.s.json')).toBe(`${realpathSync(f)}.s.json`);
    expect(defaultJobStateFile(f, false, '/unused', '.s.json')).toBe(`${realpathSync(f)}.s.json`);
    // A target not made yet: beside its name in the directory's real path.
    expect(defaultJobStateFile(join(d, 'new.img'), false, '/unused', '.s.json')).toBe(join(realpathSync(d), 'new.img.s.json'));
    // Written before stop 40 through the alias: found while the new name has none.
    writeFileSync(join(d, 'alias.img.s.json'), '{}');
    expect(defaultJobStateFile(join(d, 'alias.img'), false, '/unused', '.s.json')).toBe(join(d, 'alias.img.s.json'));
    writeFileSync(`${realpathSync(f)}.s.json`, '{}');
    expect(defaultJobStateFile(join(d, 'alias.img'), false, '/unused', '.s.json')).toBe(`${realpathSync(f)}.s.json`);
  });

  testAsRoot('a block device that is not a dm device: by its path with links followed', () => {
    const d = mkdtempSync(join(dir, 'bstate-'));
    const node = join(d, 'blk');
    execFileSync('mknod', [node, 'b', '240', '1048002']);
    symlinkSync(node, join(d, 'link'));
    const expected = join('/state', `${encodeURIComponent(realpathSync(node).replace(/^\/+/, ''))}.json`);
    expect(defaultJobStateFile(join(d, 'link'), true, '/state', '.s.json')).toBe(expected);
    expect(defaultJobStateFile(node, true, '/state', '.s.json')).toBe(expected);
  });
});
