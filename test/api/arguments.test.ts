/**
 * A caller's mistake at a library entry point is a UsageError (EINVAL) naming
 * the argument, before anything is opened: not a TypeError from deep inside,
 * not an I/O error of the output, not silently accepted (README "Errors").
 * And a caller's own callback that throws comes back as itself.
 */
import { writeFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import { checkMetadata, receive, send, ThinMetadata, ThinPool, UsageError } from '../../src';
import { fixtureFile, fixtureImage } from '../helpers/fixtures';
import { scratch, writeDataFile } from '../stream/helpers';

const s = scratch();
afterAll(() => s.cleanup());
const sink = (): Writable => new Writable({ write: (_c, _e, cb) => cb() });

let S: { metadata: string; data: string; snap: number; deviceSize: number };
beforeAll(async () => {
  const img = fixtureImage('basic');
  const md = await ThinMetadata.fromBuffer(img);
  const bs = md.superblock.dataBlockSize * 512;
  await md.close();
  writeFileSync(s.path('m.bin'), img);
  await writeDataFile(img, s.path('data.bin'), bs);
  S = { metadata: s.path('m.bin'), data: s.path('data.bin'), snap: 1, deviceSize: 4096 * bs };
});

const usage = (message: RegExp) => expect.objectContaining({ name: 'UsageError', code: 'EINVAL', message: expect.stringMatching(message) });
// Found by an outside hunt: each gave a TypeError, EUNKNOWN, an EIO "cannot write the output", or was accepted.
const cases: [string, () => Promise<unknown>, RegExp][] = [
  ['send()', () => (send as (o?: unknown) => Promise<unknown>)(), /^send needs an options object/],
  ['send output undefined', () => send({ ...S, output: undefined as unknown as string }), /^output must be a path or a Writable/],
  ['send signal {}', () => send({ ...S, output: sink(), signal: {} as AbortSignal }), /^signal must be an AbortSignal, got a plain object/],
  ['send poolId 5', () => send({ ...S, output: sink(), poolId: 5 as unknown as string }), /^poolId must be a well-formed string/],
  ['send poolId with a lone surrogate', () => send({ ...S, output: sink(), poolId: '\ud800pool' }), /^poolId must be a well-formed string \(no lone surrogates\)/],
  ['receive()', () => (receive as (o?: unknown) => Promise<unknown>)(), /^receive needs an options object/],
  ['receive target undefined', () => receive({ target: undefined as unknown as string, input: S.metadata }), /^target must be a non-empty string, got undefined/],
  ['receive input undefined', () => receive({ target: s.path('t.img'), input: undefined as unknown as string, create: true }), /^input must be a path, '-' \(stdin\) or a Readable/],
  ['receive zero bogus', () => receive({ target: s.path('t.img'), input: S.metadata, create: true, zero: 'bogus' as 'auto' }), /^zero must be one of 'auto', 'discard', 'zeroout', 'punch', got "bogus"/],
  ['receive direct x', () => receive({ target: s.path('t.img'), input: S.metadata, create: true, direct: 'x' as 'auto' }), /^direct must be one of/],
  ['ThinMetadata.open(undefined)', () => ThinMetadata.open(undefined as unknown as string), /^path must be a non-empty string/],
  ["ThinMetadata.open(p, { direct: 'x' })", () => ThinMetadata.open(S.metadata, { direct: 'x' as 'auto' }), /^direct must be one of/],
  ['ThinPool.open(5)', () => ThinPool.open(5 as unknown as string), /^pool name must be a non-empty string/],
];

test.each(cases)('%s: UsageError naming the argument', async (_name, call, message) => {
  await expect(call()).rejects.toEqual(usage(message));
  await expect(call()).rejects.toBeInstanceOf(UsageError);
});

test('checkMetadata with an onProgress that is not a function: UsageError', async () => {
  using f = fixtureFile('basic');
  await using md = await ThinMetadata.open(f.path);
  await expect(checkMetadata(md, { onProgress: 5 as unknown as () => void })).rejects.toEqual(usage(/^onProgress must be a function, got number 5/));
});

test("a caller's onProgress that throws: that error, not an output I/O error (into a Writable and into a file)", async () => {
  const mine = new RangeError('bug in my callback');
  const onProgress = (): void => {
    throw mine;
  };
  await expect(send({ ...S, output: sink(), onProgress })).rejects.toBe(mine);
  await expect(send({ ...S, output: s.path('x.stream'), onProgress })).rejects.toBe(mine);
});
