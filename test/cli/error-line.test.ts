/** errorLine: the one stderr line every CLI error becomes, whatever threw it. */
import { errorLine, interruptedError } from '../../src/cli/common';
import { AbortError, DmthinError, SetupError, UsageError } from '../../src/errors';

test.each([
  [new UsageError("unknown format 'x'"), "dmthin dump: unknown format 'x' [EINVAL]"],
  [new SetupError('needs-root', 'EACCES', 'needs root (CAP_SYS_ADMIN): cannot open /dev/mapper/control: permission denied'), 'dmthin dump: needs root (CAP_SYS_ADMIN): cannot open /dev/mapper/control: permission denied [EACCES]'],
  // Node's own messages start with the code: it goes to the end, as on every line.
  [Object.assign(new Error("ENOENT: no such file or directory, open '/x'"), { code: 'ENOENT' }), "dmthin dump: no such file or directory, open '/x' [ENOENT]"],
  [Object.assign(new Error("ENOSPC: No space left on device, pwritev 'full/t.img'; target t is incomplete"), { code: 'ENOSPC' }), "dmthin restore: no space left on device, pwritev 'full/t.img'; target t is incomplete [ENOSPC]"],
  // A bug or a dependency's plain Error still gets a code, and one line.
  [new TypeError('x is not a function'), 'dmthin dump: x is not a function [EUNKNOWN]'],
  [new Error('first\n  second\n'), 'dmthin dump: first second [EUNKNOWN]'],
  ['a string', 'dmthin dump: a string [EUNKNOWN]'],
  [new DmthinError('', 'no code'), 'dmthin dump: no code [EUNKNOWN]'],
])('%p', (err, line) => {
  expect(errorLine(line.slice(0, line.indexOf(':')), err)).toBe(line);
});

test('a prefix goes before the message (cleanup failures)', () => {
  expect(errorLine('dmthin ls', new DmthinError('EBUSY', 'pool busy'), 'cleanup failed: ')).toBe('dmthin ls: cleanup failed: pool busy [EBUSY]');
});

test('an error whose `await using` clean-up failed too is reported first, with its code, the clean-up after it', async () => {
  // What `await using` makes of it (TypeScript's helper on Node 20), not a hand-built object.
  const body = new DmthinError('EIO', 'local repository: put of chunks/e0/e0 failed (ENOSPC)');
  const run = async () => {
    const a = { [Symbol.asyncDispose]: async () => Promise.reject(new DmthinError('ENOSPC', 'journal write failed')) };
    const b = { [Symbol.asyncDispose]: async () => Promise.reject(new Error('lock release failed')) };
    await using _a = a;
    await using _b = b;
    throw body;
  };
  const err = await run().then(() => null, (e: unknown) => e);
  expect((err as Error).name).toBe('SuppressedError');
  expect(errorLine('dmthin backup', err)).toBe(
    'dmthin backup: local repository: put of chunks/e0/e0 failed (ENOSPC); cleaning up failed too: lock release failed; cleaning up failed too: journal write failed [EIO]',
  );
});

test('a command stopped by a signal says "interrupted", and what the abort left behind when it says so', () => {
  const restore = new AbortError('The operation was aborted');
  restore.message += '; target t.img is incomplete (its restore state s.json records it): restore a backup onto it again';
  expect(errorLine('dmthin restore', interruptedError(restore))).toBe(
    'dmthin restore: interrupted; target t.img is incomplete (its restore state s.json records it): restore a backup onto it again [ABORT_ERR]',
  );
  expect(errorLine('dmthin dump', interruptedError(new AbortError()))).toBe('dmthin dump: interrupted [ABORT_ERR]');
  // Not an abort (an error the signal caused on its way): nothing of it is taken.
  expect(errorLine('dmthin dump', interruptedError(new DmthinError('EIO', 'read failed; x')))).toBe('dmthin dump: interrupted [ABORT_ERR]');
});
