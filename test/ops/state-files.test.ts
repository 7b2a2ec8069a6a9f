/**
 * Every state file (receive, restore, merge) is read through one reader that
 * neither waits on a FIFO named as the state nor reads a huge file whole
 * (outside hunt V: readState and readRestoreState on a FIFO blocked for
 * ever; a 600 MB file took ~670 MB of memory and ended in "Invalid string
 * length").
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readMergeState } from '../../src/ops/merge-state';
import { readRestoreState } from '../../src/ops/restore-state';
import { readState } from '../../src/stream/receive/state';
import { MAX_STATE_BYTES } from '../../src/output/file';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'dmthin-state-files-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const readers: [string, (p: string) => Promise<unknown>][] = [
  ['receive', async (p) => {
    const r = await readState(p);
    if (!r.ok) throw new Error(r.error);
    return r.state;
  }],
  ['restore', readRestoreState],
  ['merge', readMergeState],
];

describe.each(readers)('the %s state', (_what, read) => {
  it('a FIFO at its path is refused at once, not waited on', async () => {
    const fifo = join(dir, 'fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const t0 = Date.now();
    await expect(read(fifo)).rejects.toThrow(/not a regular file/);
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it('a file larger than any state is refused without reading it', async () => {
    const big = join(dir, 'big');
    writeFileSync(big, '');
    truncateSync(big, MAX_STATE_BYTES + 1);
    const before = process.memoryUsage().rss;
    await expect(read(big)).rejects.toThrow(new RegExp(`${MAX_STATE_BYTES + 1} bytes, more than a state file holds`));
    expect(process.memoryUsage().rss - before).toBeLessThan(MAX_STATE_BYTES / 2);
  });

  it('none at its path is no state', async () => {
    await expect(read(join(dir, 'absent'))).resolves.toBeNull();
  });
});
