/**
 * merge and replicate write state files over the path they are given; a state
 * path that names the data they write (the external origin, the target, the
 * target's receive state) is refused before device-mapper is asked anything,
 * and the file is left byte-identical.
 */
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from './run-cli';

let dir: string;
let img: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'dmthin-state-over-'));
  img = join(dir, 'data.img');
  writeFileSync(img, Buffer.alloc(65536, 7));
  symlinkSync(img, join(dir, 'link'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test.each([
  ['replicate', () => ['--pool', 'p', '--thin', '1', '--target', img, '--state', img], /the replication state file .* is the target/],
  ['replicate', () => ['--pool', 'p', '--thin', '1', '--target', img, '--state', join(dir, 'link')], /is the target .*\(the same file\)/],
  ['replicate', () => ['--pool', 'p', '--thin', '1', '--target', join(dir, 't2'), '--receive-state', img, '--state', img], /is the target's receive state file/],
  ['merge', () => ['--pool', 'p', '--snap', '1', '--external-origin', img, '--state', img], /the merge state file .* is the external origin/],
])('dmthin %s with a state file over an input: refused, nothing written', (cmd, args, re) => {
  const r = runCli([cmd, ...args()]);
  expect({ status: r.status, stdout: r.stdout, lines: r.stderr.trim().split('\n').length }).toEqual({ status: 1, stdout: '', lines: 1 });
  expect(r.stderr).toMatch(re);
  expect(r.stderr.trim()).toMatch(/\[EINVAL\]$/);
  expect(readFileSync(img)).toEqual(Buffer.alloc(65536, 7));
});
