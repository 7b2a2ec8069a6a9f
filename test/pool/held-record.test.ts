/**
 * The records that let a dmthin reserve release a metadata snapshot a killed
 * dmthin left held (src/pool/held-record.ts): only a root recorded by a
 * process that is gone counts as orphaned; a live owner, another root, no
 * record or a damaged one never do.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { dropRecord, forgetHeld, ownerOf, recordHeld } from '../../src/pool/held-record';
import { scratch, type Scratch } from '../stream/helpers';

let s: Scratch;
const saved = process.env.DMTHIN_HELD_DIR;
beforeAll(() => {
  s = scratch();
  process.env.DMTHIN_HELD_DIR = join(s.dir, 'held');
});
afterAll(() => {
  if (saved === undefined) delete process.env.DMTHIN_HELD_DIR;
  else process.env.DMTHIN_HELD_DIR = saved;
  s.cleanup();
});

test('this process holds it: running; released: no record', () => {
  recordHeld('pool-a', 1183);
  expect(ownerOf('pool-a', 1183)).toEqual({ kind: 'running', pid: process.pid });
  expect(ownerOf('pool-a', 99)).toEqual({ kind: 'unknown' }); // another root: someone else's
  expect(ownerOf('pool-b', 1183)).toEqual({ kind: 'unknown' });
  forgetHeld('pool-a', 1183);
  expect(ownerOf('pool-a', 1183)).toEqual({ kind: 'unknown' });
  expect(readdirSync(process.env.DMTHIN_HELD_DIR!)).toEqual([]);
});

test('recorded by a process that has ended: orphaned (its root only); forgetHeld of another process leaves it', () => {
  const child = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(require.resolve('../../dist/pool/held-record.js'))}).recordHeld('pool/c', 42)`], {
    env: { ...process.env },
    encoding: 'utf8',
  });
  expect(child.status).toBe(0);
  expect(ownerOf('pool/c', 42)).toEqual({ kind: 'orphaned' });
  expect(ownerOf('pool/c', 43)).toEqual({ kind: 'unknown' });
  forgetHeld('pool/c', 42); // not this process's record
  expect(ownerOf('pool/c', 42)).toEqual({ kind: 'orphaned' });
  dropRecord('pool/c');
  expect(ownerOf('pool/c', 42)).toEqual({ kind: 'unknown' });
});

test('a live process with a reused pid (another start time), or another boot: orphaned', () => {
  recordHeld('pool-d', 7);
  const file = join(process.env.DMTHIN_HELD_DIR!, 'pool-d.json');
  const rec = JSON.parse(readFileSync(file, 'utf8'));
  writeFileSync(file, JSON.stringify({ ...rec, startTime: '1' }));
  expect(ownerOf('pool-d', 7)).toEqual({ kind: 'orphaned' });
  writeFileSync(file, JSON.stringify({ ...rec, bootId: 'another-boot' }));
  expect(ownerOf('pool-d', 7)).toEqual({ kind: 'orphaned' });
  dropRecord('pool-d');
});

test('a damaged record counts as none', () => {
  const file = join(process.env.DMTHIN_HELD_DIR!, 'pool-e.json');
  for (const text of ['', '{', '[]', JSON.stringify({ format: 'dmthin-held-metadata-snap', version: 1, pool: 'other', root: 7, pid: 1 })]) {
    writeFileSync(file, text);
    expect(ownerOf('pool-e', 7)).toEqual({ kind: 'unknown' });
  }
  dropRecord('pool-e');
});

test('a first directory that cannot be written (/var/lib read-only): the record goes to the next, and is found and removed there (hunt L item 7)', () => {
  const before = process.env.DMTHIN_HELD_DIR;
  const fallback = join(s.dir, 'fallback');
  // A directory under a regular file can never be made.
  process.env.DMTHIN_HELD_DIR = `${join(s.dir, 'a-file')}/held:${fallback}`;
  writeFileSync(join(s.dir, 'a-file'), '');
  try {
    recordHeld('pool-f', 5);
    expect(readdirSync(fallback)).toEqual(['pool-f.json']);
    expect(ownerOf('pool-f', 5)).toEqual({ kind: 'running', pid: process.pid });
    forgetHeld('pool-f', 5);
    expect(readdirSync(fallback)).toEqual([]);
    recordHeld('pool-f', 6);
    dropRecord('pool-f');
    expect(readdirSync(fallback)).toEqual([]);
  } finally {
    process.env.DMTHIN_HELD_DIR = before;
  }
});

test('a live record of the held root in the fallback wins over a dead one left in the first directory (review: the next reserve would release a live reader\'s snapshot)', () => {
  const before = process.env.DMTHIN_HELD_DIR;
  const first = join(s.dir, 'two-var');
  const fallback = join(s.dir, 'two-run');
  process.env.DMTHIN_HELD_DIR = `${first}:${fallback}`;
  try {
    mkdirSync(first);
    const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    const gone = spawnSync('true').pid!;
    writeFileSync(join(first, 'pool.json'), JSON.stringify({ format: 'dmthin-held-metadata-snap', version: 1, pool: 'pool', root: 9, pid: gone, startTime: '1', bootId }));
    // The first directory cannot take a new record now (its temporary name is taken by a directory).
    mkdirSync(join(first, `pool.json.${process.pid}.tmp`));
    recordHeld('pool', 9);
    expect(ownerOf('pool', 9)).toEqual({ kind: 'running', pid: process.pid });
  } finally {
    process.env.DMTHIN_HELD_DIR = before;
  }
});
