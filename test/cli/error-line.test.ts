/** errorLine: the one stderr line every CLI error becomes, whatever threw it. */
import { errorLine } from '../../src/cli/common';
import { DmthinError, SetupError, UsageError } from '../../src/errors';

test.each([
  [new UsageError("unknown format 'x'"), "dmthin dump: unknown format 'x' [EINVAL]"],
  [new SetupError('needs-root', 'EACCES', 'needs root (CAP_SYS_ADMIN): cannot open /dev/mapper/control: permission denied'), 'dmthin dump: needs root (CAP_SYS_ADMIN): cannot open /dev/mapper/control: permission denied [EACCES]'],
  // Node's own messages start with the code: it is not repeated.
  [Object.assign(new Error("ENOENT: no such file or directory, open '/x'"), { code: 'ENOENT' }), "dmthin dump: ENOENT: no such file or directory, open '/x'"],
  // A bug or a dependency's plain Error still gets a code, and one line.
  [new TypeError('x is not a function'), 'dmthin dump: x is not a function [EUNKNOWN]'],
  [new Error('first\n  second\n'), 'dmthin dump: first second [EUNKNOWN]'],
  ['a string', 'dmthin dump: a string [EUNKNOWN]'],
  [new DmthinError('', 'no code'), 'dmthin dump: no code [EUNKNOWN]'],
])('%p', (err, line) => {
  expect(errorLine('dmthin dump', err)).toBe(line);
});

test('a prefix goes before the message (cleanup failures)', () => {
  expect(errorLine('dmthin ls', new DmthinError('EBUSY', 'pool busy'), 'cleanup failed: ')).toBe('dmthin ls: cleanup failed: pool busy [EBUSY]');
});
