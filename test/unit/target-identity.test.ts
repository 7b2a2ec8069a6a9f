/**
 * targetIdentity: what a job's state records about its target beyond the
 * path, so that a path now leading elsewhere is not taken as the same target.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { targetIdentity } from '../../src/output/file';
import { testAsRoot } from '../helpers/root';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'dmthin-target-id-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test('a file: the same through a symlink, another once removed and made again at its path; nothing there is null', async () => {
  const f = join(dir, 'img');
  writeFileSync(f, 'a');
  symlinkSync(f, join(dir, 'link'));
  const id = await targetIdentity(f);
  expect(id).toMatch(/^file:\d+:\d+:\d+$/);
  expect(await targetIdentity(join(dir, 'link'))).toBe(id);
  writeFileSync(f, 'b'); // rewritten in place: the same file
  expect(await targetIdentity(f)).toBe(id);
  rmSync(f);
  expect(await targetIdentity(f)).toBeNull();
  writeFileSync(f, 'a');
  expect(await targetIdentity(f)).not.toBe(id);
});

testAsRoot('a block device without a dm or loop entry in /sys: by its number (major and minor decoded from dev_t)', async () => {
  // Numbers no machine here has: /sys/dev/block has no entry for them.
  const mk = (name: string, major: number, minor: number): string => {
    const p = join(dir, name);
    execFileSync('mknod', [p, 'b', String(major), String(minor)]);
    return p;
  };
  const a = mk('a', 240, 1048000);
  const b = mk('b', 240, 1048000);
  const c = mk('c', 240, 1048001);
  expect(await targetIdentity(a)).toBe('block:240:1048000');
  expect(await targetIdentity(b)).toBe(await targetIdentity(a));
  expect(await targetIdentity(c)).toBe('block:240:1048001');
});
