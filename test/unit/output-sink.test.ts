import { Writable } from 'node:stream';
import { asciiBytes, OutputSink } from '../../src/output/sink';

/** Collects what the sink writes. */
function collector(): { out: Writable; text: () => string } {
  const parts: Buffer[] = [];
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      parts.push(Buffer.from(chunk));
      cb();
    },
  });
  return { out, text: () => Buffer.concat(parts).toString('latin1') };
}

describe('OutputSink byte writers', () => {
  it('uint prints what String() prints, for every digit count up to 2^53 - 1', async () => {
    const { out, text } = collector();
    const s = new OutputSink(out, 'test');
    const values: number[] = [0, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40 - 1, 2 ** 53 - 1];
    for (let p = 1; p <= 1e15; p *= 10) values.push(p - 1, p, p + 1);
    let seed = 12345;
    for (let i = 0; i < 20000; i++) {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      values.push(Math.floor((seed / 2 ** 31) * 2 ** (1 + (i % 53))));
    }
    for (const v of values) {
      s.room(24);
      s.uint(v);
      s.bytes(asciiBytes('\n'));
      await s.maybeFlush();
    }
    await s.flush();
    expect(text()).toBe(values.map((v) => `${v}\n`).join(''));
  });

  it('bytes and str interleave in order across chunk boundaries', async () => {
    const { out, text } = collector();
    const s = new OutputSink(out, 'test');
    const tag = asciiBytes('<tag a="');
    let want = '';
    for (let i = 0; i < 50000; i++) {
      s.room(32);
      s.bytes(tag);
      s.uint(i);
      s.str('"/>\n');
      want += `<tag a="${i}"/>\n`;
      await s.maybeFlush();
    }
    await s.flush();
    expect(text()).toBe(want);
  });
});
