import { AbortError, codeOfErrno, DmthinError, errnoOf, fromNative, MetadataError, UsageError } from '../../src/errors';

test('MetadataError keeps its domain fields and Node shape', () => {
  const e = new MetadataError('checksum', 'bad', { block: 10, tree: 'mapping', devId: 3 });
  expect(e).toBeInstanceOf(DmthinError);
  expect(e).toBeInstanceOf(Error);
  expect(e).toMatchObject({ code: 'EILSEQ', errno: -84, kind: 'checksum', block: 10, tree: 'mapping', devId: 3, name: 'MetadataError' });
  expect(new MetadataError('blocknr', 'x')).toMatchObject({ code: 'ENOTBLK', errno: -15 });
  expect(new MetadataError('cycle', 'x')).toMatchObject({ code: 'EUCLEAN', errno: -117 });
});

test('errno tables', () => {
  expect(errnoOf('EBUSY')).toBe(-16);
  expect(codeOfErrno(-16)).toBe('EBUSY');
  expect(codeOfErrno(16)).toBe('EBUSY');
});

test('UsageError and AbortError codes', () => {
  expect(new UsageError('x')).toMatchObject({ code: 'EINVAL', errno: -22 });
  expect(new AbortError()).toMatchObject({ code: 'ABORT_ERR' });
});

test('fromNative keeps errno, syscall, path and offset', () => {
  const raw = Object.assign(new Error('EIO: i/o error, preadv'), { code: 'EIO', errno: -5, syscall: 'preadv', path: '/x', offset: 4096 });
  const e = fromNative(raw, { device: 'pool' });
  expect(e).toMatchObject({ code: 'EIO', errno: -5, syscall: 'preadv', path: '/x', offset: 4096, device: 'pool' });
});
