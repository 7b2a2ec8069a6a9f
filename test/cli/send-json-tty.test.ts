/**
 * `dmthin send --json` with stderr on a terminal: the progress bar is cleared
 * before the JSON summary is written there, not redrawn after it (as
 * receive, backup and restore do). The terminal is script(1)'s pseudo-terminal;
 * the pool is made by thin_restore (test/ops/backup-fixture.ts).
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { CLI } from './run-cli';
import { scratch, type Scratch } from '../stream/helpers';
import { makePool, runs, type PoolImages } from '../ops/backup-fixture';

const hasScript = spawnSync('script', ['--version']).status === 0;
let s: Scratch;
let pool: PoolImages;
beforeAll(() => {
  s = scratch();
  // 16 blocks of 64 KiB: a 1 MiB device, all mapped.
  pool = makePool(s.dir, 'pool', { dataBlockSize: 128, nrDataBlocks: 16, devices: new Map([[1, runs([0, 0, 16])]]), zeroBlocks: new Set() });
});
afterAll(() => s.cleanup());

const shellQuote = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;

(hasScript ? test : test.skip)('send --json on a terminal: the bar is gone before the JSON, and not drawn after it', () => {
  const typescript = s.path('typescript');
  const cmd = [process.execPath, CLI, 'send', '--metadata', pool.metadata, '--data', pool.data, '--snap', '1', '--size', '1M', '--json', '-o', s.path('stream')].map(shellQuote).join(' ');
  const r = spawnSync('script', ['-qec', cmd, typescript], { encoding: 'utf8', timeout: 60_000 });
  expect(r.status).toBe(0);
  const out = readFileSync(typescript, 'utf8');
  const open = out.indexOf('{\r\n');
  const close = out.indexOf('\r\n}\r\n', open);
  expect(open).toBeGreaterThan(-1);
  expect(close).toBeGreaterThan(open);
  expect(JSON.parse(out.slice(open, close + 3).replace(/\r\n/g, '\n'))).toMatchObject({ dataBlocks: 16, dataBytes: 1048576 });
  // The bar was drawn (stderr is a terminal) and its line cleared before the JSON.
  expect(out.slice(0, open)).toMatch(/send \[/);
  expect(out.slice(0, open).lastIndexOf('\x1b[2K')).toBeGreaterThan(out.slice(0, open).lastIndexOf('send ['));
  // After the JSON: no bar, and nothing that moves the cursor back over it.
  const after = out.slice(close + 5);
  expect(after).not.toMatch(/send \[/);
  expect(after).not.toMatch(/\x1b8|\x1b\[1G|\x1b\[2K/);
});
