/**
 * One restore and one merge per target/state file (native/job-lock.ts): a
 * second holder is refused at once with EBUSY and a message naming what
 * runs; a released lock can be taken again. flock(2) conflicts between two
 * open files even in one process, so no child is needed.
 */
import { closeSync, existsSync, openSync, unlinkSync, writeFileSync } from 'node:fs';
import { MergeLock } from '../../src/ops/merge-state';
import { RestoreLock } from '../../src/ops/restore-state';
import { ReceiveLock } from '../../src/stream/receive/lock';
import { scratch, type Scratch } from '../stream/helpers';

let s: Scratch;
beforeAll(() => {
  s = scratch();
});
afterAll(() => s.cleanup());

test('restore: the state file and a file target are held; a second restore is refused with EBUSY', () => {
  const target = s.path('t.img');
  writeFileSync(target, Buffer.alloc(4096));
  const state = s.path('state/t.json'); // its directory is created
  const a = RestoreLock.acquire(target, state);
  a.lockTarget();
  try {
    expect(() => RestoreLock.acquire(target, state)).toThrow(
      expect.objectContaining({ code: 'EBUSY', syscall: 'flock', message: expect.stringMatching(/^another restore is writing to .*t\.img \(.*t\.json\.lock is locked\): wait for it to finish$/) }),
    );
    // Another state file, same target file: the target's own lock refuses it.
    const b = RestoreLock.acquire(target, s.path('other.json'));
    try {
      expect(() => b.lockTarget()).toThrow(expect.objectContaining({ code: 'EBUSY', path: target }));
      // A receive locks a file target the same way: the refusal cannot tell which job holds it (it said "another restore").
      const r = ReceiveLock.acquire(target, s.path('rx.json'), false);
      try {
        expect(() => r.lockTarget()).toThrow(expect.objectContaining({ code: 'EBUSY', message: expect.stringMatching(/^another receive or restore is writing to .*t\.img \(the file is locked\)/) }));
      } finally {
        r.release();
      }
      expect(() => b.lockTarget()).toThrow(expect.objectContaining({ message: expect.stringMatching(/^another receive or restore is writing to .*t\.img \(.*t\.img is locked\)/) }));
    } finally {
      b.release();
    }
  } finally {
    a.release();
  }
  const again = RestoreLock.acquire(target, state);
  again.lockTarget();
  again.release();
  again.release(); // idempotent
});

test('merge: one holder of a state file lock at a time', () => {
  const state = s.path('merge/pool.snap3.json');
  const a = MergeLock.acquire(state);
  try {
    expect(() => MergeLock.acquire(state)).toThrow(expect.objectContaining({ code: 'EBUSY', message: expect.stringMatching(/^another merge of this snapshot is running/) }));
  } finally {
    a.release();
  }
  MergeLock.acquire(state).release();
});

test('a state directory that cannot be made is a typed error naming it', () => {
  writeFileSync(s.path('plain-file'), 'x');
  expect(() => MergeLock.acquire(s.path('plain-file/sub/state.json'))).toThrow(
    expect.objectContaining({ code: 'ENOTDIR', syscall: 'mkdir', message: expect.stringContaining('cannot create the merge state directory') }),
  );
});

test('a .lock file is removed when its job ends; a holder of the removed file does not exclude the next job', () => {
  const state = s.path('gone/pool.snap4.json');
  const a = MergeLock.acquire(state);
  expect(existsSync(`${state}.lock`)).toBe(true);
  // A process that opened the lock file before a removed it: it may flock the
  // removed file; the path names a new one, which the next job locks.
  const early = openSync(`${state}.lock`, 'r');
  a.release();
  expect(existsSync(`${state}.lock`)).toBe(false);
  try {
    const b = MergeLock.acquire(state);
    expect(() => MergeLock.acquire(state)).toThrow(expect.objectContaining({ code: 'EBUSY' }));
    b.release();
  } finally {
    closeSync(early);
  }
  expect(existsSync(`${state}.lock`)).toBe(false);
});

test('a lock file replaced while a job waits to lock it: the job locks the file the path names', () => {
  const state = s.path('swap/state.json');
  const a = MergeLock.acquire(state);
  // Some other holder removes the lock file and a new job makes its own.
  unlinkSync(`${state}.lock`);
  const b = MergeLock.acquire(state);
  try {
    expect(() => MergeLock.acquire(state)).toThrow(expect.objectContaining({ code: 'EBUSY' }));
  } finally {
    b.release();
    a.release();
  }
});
