/**
 * Printing a delta: thin_delta 0.9.0's XML, byte for byte (plain and
 * --verbose), or JSON. One documented difference, as for dump: with a metadata
 * snapshot, nr_data_blocks is the true size (0.9.0 prints 0).
 *
 * Plain XML merges consecutive virtual blocks of one kind whatever their data
 * blocks; --verbose breaks ranges where data blocks are not contiguous and
 * groups consecutive ranges of one kind in one container element.
 */
import { check, unknownFormat, UsageError } from '../errors';
import { type AsciiTag, asciiTag, OutputSink, type SinkTarget } from '../output/sink';
import type { DeltaKind, DeltaOptions, DeltaStats, RawDeltaExtent } from './delta';
import { ThinMetadata } from './metadata';
import type { VirtualKey } from './mappings';

/** writeDelta's output: thin_delta's XML, or JSON. */
export type DeltaFormat = 'xml' | 'json';

/** Options of writeDelta. */
export interface WriteDeltaOptions extends DeltaOptions {
  /** Output format (default xml). */
  format?: DeltaFormat;
  /** Break ranges where data blocks are not contiguous, with their data blocks (thin_delta --verbose). */
  verbose?: boolean;
}

/** What to compare: two thin devices, or two mapping-tree roots. */
export type DeltaSubject =
  | {
      /** Thin device id of the left side. */
      left: number;
      /** Thin device id of the right side. */
      right: number;
    }
  | {
      /** Mapping-tree root block of the left side. */
      leftRoot: number;
      /** Mapping-tree root block of the right side. */
      rightRoot: number;
    };

/** `    <kind begin="` of a plain line, per kind. */
const PLAIN_OPEN: Record<DeltaKind, AsciiTag> = {
  same: asciiTag('    <same begin="'),
  different: asciiTag('    <different begin="'),
  left_only: asciiTag('    <left_only begin="'),
  right_only: asciiTag('    <right_only begin="'),
};
const PLAIN_LENGTH = asciiTag('" length="');
const PLAIN_CLOSE = asciiTag('"/>\n');
/** Bytes of the longest plain line: its tags and two numbers of at most 20 digits. */
const MAX_PLAIN_LINE = 100;

const add = (a: VirtualKey, n: number): VirtualKey => (typeof a === 'number' && a + n <= Number.MAX_SAFE_INTEGER ? a + n : BigInt(a) + BigInt(n));
// eslint-disable-next-line eqeqeq
const eq = (a: VirtualKey, b: VirtualKey) => a == b;

/** Feeds every batch to `each` (flushing the sink between batches); returns the generator's result. */
async function drain<T>(gen: AsyncGenerator<RawDeltaExtent[], T>, s: OutputSink, each: (e: RawDeltaExtent) => void, afterBatch?: () => void): Promise<T> {
  for (;;) {
    const r = await gen.next();
    if (r.done) return r.value;
    // Indexed: for-of makes an iterator result per extent until V8 optimises drain.
    const batch = r.value;
    for (let i = 0; i < batch.length; i++) each(batch[i]);
    afterBatch?.();
    await s.maybeFlush();
  }
}

/** Writes the delta of two devices (or raw roots); resolves with the walk's counters. */
export async function writeDelta(md: ThinMetadata, out: SinkTarget, subject: DeltaSubject, opts: WriteDeltaOptions = {}): Promise<DeltaStats> {
  check.instance(md, ThinMetadata, 'metadata');
  opts = check.walk(opts, 'writeDelta options');
  check.methods(out, 'out', 'a Writable', ['write', 'on']);
  if (opts.format !== undefined && opts.format !== 'xml' && opts.format !== 'json') throw unknownFormat(opts.format, ['xml', 'json']);
  if (typeof subject !== 'object' || subject === null) throw new UsageError('writeDelta needs a subject: {left, right} thin device ids, or {leftRoot, rightRoot}');
  // Both kinds at once would be ambiguous (one was taken silently).
  if (('left' in subject || 'right' in subject) && ('leftRoot' in subject || 'rightRoot' in subject)) {
    throw new UsageError('writeDelta takes a subject of {left, right} thin device ids or of {leftRoot, rightRoot}, not both');
  }
  if ('left' in subject) {
    check.devId(subject.left, 'the left device id');
    check.devId(subject.right, 'the right device id');
  } else {
    check.integer(subject.leftRoot, 'leftRoot', 0);
    check.integer(subject.rightRoot, 'rightRoot', 0);
  }
  check.boolean(opts.verbose, 'verbose');
  const s = new OutputSink(out, undefined, opts.signal);
  const sb = md.superblock;
  // thin_delta 0.9.0 prints the held-root field of the superblock it reads, when non-zero: live, the
  // snapshot held; with -m, the held copy's own field (0 as the kernel writes it, but printed if not).
  const held = sb.heldRoot || null;
  const head =
    `<superblock uuid="" time="${sb.time}" transaction="${sb.transactionId}" data_block_size="${sb.dataBlockSize}" nr_data_blocks="${md.nrDataBlocks}"` +
    (held !== null ? ` metadata_snap="${held}"` : '');
  // Plain XML prints kinds and ranges only: the walk merges by kind (fewer extents to make and format).
  // Every consumer below copies what it needs from an extent before asking for the next batch.
  const walkOpts = { ...opts, mergeByKind: opts.format !== 'json' && !opts.verbose, reuseExtents: true };
  const gen =
    'left' in subject ? md.deltaExtentBatches(subject.left, subject.right, walkOpts) : md.deltaRootBatches(subject.leftRoot, subject.rightRoot, walkOpts);

  if (opts.format === 'json') {
    // Key names and types as docs/json.md: u64s (transactionId, begin) as decimal strings, every key always present.
    const ids = 'left' in subject ? `"left":${subject.left},"right":${subject.right}` : `"leftRoot":${subject.leftRoot},"rightRoot":${subject.rightRoot}`;
    s.str(
      `{"superblock":{"time":${sb.time},"transactionId":"${sb.transactionId}","dataBlockSize":${sb.dataBlockSize},"nrDataBlocks":${md.nrDataBlocks}` +
        `,"metadataSnap":${held ?? 'null'}},${ids},"extents":[`,
    );
    let first = true;
    const stats = await drain(gen, s, (e) => {
      s.str(`${first ? '\n' : ',\n'}{"kind":"${e.kind}","begin":"${e.begin}","length":${e.length},"leftData":${e.leftData ?? 'null'},"rightData":${e.rightData ?? 'null'}}`);
      first = false;
    });
    s.str('\n]}\n');
    await s.flush();
    return stats;
  }

  s.str(`${head}>\n`);
  s.str('left' in subject ? `  <diff left="${subject.left}" right="${subject.right}">\n` : `  <diff left_root="${subject.leftRoot}" right_root="${subject.rightRoot}">\n`);

  // Plain: the pending merged element. Verbose: the open container.
  let pk: DeltaKind | undefined;
  let pBegin: VirtualKey = 0;
  let pLen = 0;
  let open: DeltaKind | undefined;
  // Verbose lines of a batch are built as one string and written once (see OutputSink.ascii).
  let text = '';
  // Plain lines go into the sink as bytes (tags and digits), no string per line.
  const flushPlain = () => {
    if (pk === undefined) return;
    s.room(MAX_PLAIN_LINE);
    s.tag(PLAIN_OPEN[pk]);
    if (typeof pBegin === 'number') s.uint(pBegin);
    else s.ascii(String(pBegin));
    s.tag(PLAIN_LENGTH);
    s.uint(pLen);
    s.tag(PLAIN_CLOSE);
    pk = undefined;
  };
  const flushText = () => {
    if (text) s.ascii(text);
    text = '';
  };
  const stats = await drain(gen, s, (e) => {
    if (!opts.verbose) {
      if (pk === e.kind && eq(add(pBegin, pLen), e.begin)) pLen += e.length;
      else {
        flushPlain();
        pk = e.kind;
        pBegin = e.begin;
        pLen = e.length;
      }
      return;
    }
    if (open !== e.kind) {
      if (open) text += `    </${open}>\n`;
      text += `    <${e.kind}>\n`;
      open = e.kind;
    }
    if (e.kind === 'different') {
      text += `      <range begin="${e.begin}" left_data_begin="${e.leftData}" right_data_begin="${e.rightData}" length="${e.length}"/>\n`;
    } else {
      text += `      <range begin="${e.begin}" data_begin="${e.kind === 'right_only' ? e.rightData : e.leftData}" length="${e.length}"/>\n`;
    }
  }, flushText);
  flushPlain();
  flushText();
  if (open) s.str(`    </${open}>\n`);
  s.str('  </diff>\n</superblock>\n');
  await s.flush();
  return stats;
}
