/**
 * dump: the pool's metadata as thin_dump 0.9.0 prints it (XML or
 * human_readable, byte for byte), or as JSON. One documented difference: with a
 * metadata snapshot, nr_data_blocks is the true value from the live superblock
 * (0.9.0 prints 0 because the snapshot copy has no space maps).
 */
import { check, throwIfAborted, unknownFormat, UsageError } from '../errors';
import { asciiTag, OutputSink, type SinkTarget } from '../output/sink';
import type { DeviceDetails } from './device-details';
import { deviceAt } from './device-table';
import type { RunBatch } from './mappings';
import { ThinMetadata } from './metadata';

/** dump's output: thin_dump's XML or human-readable text, or JSON. */
export type DumpFormat = 'xml' | 'human_readable' | 'json';

/** Progress of dump. */
export interface DumpProgress {
  /** Mappings written so far, over all devices. */
  mappings: number;
  /** Sum of mapped_blocks of the devices being dumped (an estimate of the total). */
  total: number;
  /** The device being dumped. */
  devId?: number;
}

/** Options of dump. */
export interface DumpOptions {
  /** Output format (default xml). */
  format?: DumpFormat;
  /** Only these devices (missing ids are ignored, as thin_dump does). */
  devIds?: readonly number[];
  /** Devices only, without their mappings (thin_dump --skip-mappings). */
  skipMappings?: boolean;
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Called as the work advances. */
  onProgress?: (p: DumpProgress) => void;
}

interface Emitter {
  begin(sb: SuperblockHeader): void;
  beginDevice(d: DeviceDetails): void;
  runs(runs: RunBatch): void;
  endDevice(): void;
  end(): void;
}

interface SuperblockHeader {
  uuid: string;
  time: number;
  transaction: bigint;
  flags: number;
  version: number;
  dataBlockSize: number;
  nrDataBlocks: number;
  /** Held root of the dumped superblock (0: none). thin_dump 0.9.0 never prints it; JSON does. */
  heldRoot: number;
}

const SINGLE = asciiTag('    <single_mapping origin_block="');
const RANGE = asciiTag('    <range_mapping origin_begin="');
const DATA_BLOCK = asciiTag('" data_block="');
const DATA_BEGIN = asciiTag('" data_begin="');
const LENGTH = asciiTag('" length="');
const TIME = asciiTag('" time="');
const CLOSE = asciiTag('"/>\n');
/** Bytes of the longest mapping line: the tags plus four numbers of at most 20 digits. */
const MAX_LINE = 160;

class XmlEmitter implements Emitter {
  constructor(private readonly s: OutputSink) {}
  begin(sb: SuperblockHeader): void {
    this.s.str(
      `<superblock uuid="${sb.uuid}" time="${sb.time}" transaction="${sb.transaction}" flags="${sb.flags}" version="${sb.version}" data_block_size="${sb.dataBlockSize}" nr_data_blocks="${sb.nrDataBlocks}` +
        '">\n',
    );
  }
  beginDevice(d: DeviceDetails): void {
    this.s.str(
      `  <device dev_id="${d.devId}" mapped_blocks="${d.mappedBlocks}" transaction="${d.transactionId}" creation_time="${d.creationTime}" snap_time="${d.snapshottedTime}">\n`,
    );
  }
  runs(b: RunBatch): void {
    // Bytes straight into the output chunk: no string per line, so no garbage.
    const s = this.s;
    s.room(b.count * MAX_LINE);
    for (let i = 0; i < b.count; i++) {
      const o = b.originBegin[i];
      if (o !== o) {
        // At or beyond 2^53 (a bigint): rare, printed through a string.
        const big = b.origin(i);
        s.ascii(
          b.length[i] === 1
            ? `    <single_mapping origin_block="${big}" data_block="${b.dataBegin[i]}" time="${b.time[i]}"/>\n`
            : `    <range_mapping origin_begin="${big}" data_begin="${b.dataBegin[i]}" length="${b.length[i]}" time="${b.time[i]}"/>\n`,
        );
      } else if (b.length[i] === 1) {
        s.tag(SINGLE);
        s.uint(o);
        s.tag(DATA_BLOCK);
        s.uint(b.dataBegin[i]);
        s.tag(TIME);
        s.uint(b.time[i]);
        s.tag(CLOSE);
      } else {
        s.tag(RANGE);
        s.uint(o);
        s.tag(DATA_BEGIN);
        s.uint(b.dataBegin[i]);
        s.tag(LENGTH);
        s.uint(b.length[i]);
        s.tag(TIME);
        s.uint(b.time[i]);
        s.tag(CLOSE);
      }
    }
  }
  endDevice(): void {
    this.s.str('  </device>\n');
  }
  end(): void {
    this.s.str('</superblock>\n');
  }
}

class HumanEmitter implements Emitter {
  constructor(private readonly s: OutputSink) {}
  begin(sb: SuperblockHeader): void {
    this.s.str(
      `begin superblock: "${sb.uuid}", ${sb.time}, ${sb.transaction}, ${sb.flags}, ${sb.version}, ${sb.dataBlockSize}, ${sb.nrDataBlocks}` +
        '\n',
    );
  }
  beginDevice(d: DeviceDetails): void {
    this.s.str(
      `device: ${d.devId}\nmapped_blocks: ${d.mappedBlocks}\ntransaction: ${d.transactionId}\ncreation time: ${d.creationTime}\nsnap time: ${d.snapshottedTime}\n`,
    );
  }
  runs(b: RunBatch): void {
    let out = '';
    for (let i = 0; i < b.count; i++) {
      const d = b.dataBegin[i];
      const l = b.length[i];
      const o = b.originBegin[i];
      if (l === 1) {
        out += `    ${o === o ? o : b.origin(i)} -> ${d}, ${b.time[i]}\n`;
      } else if (o === o && o + (l - 1) <= Number.MAX_SAFE_INTEGER) {
        // o + (l - 1), not o + l - 1: an end of exactly 2^53 makes o + l round to 2^53 and pass the test one short.
        out += `    (${o}..${o + (l - 1)}) -> (${d}..${d + l - 1}), ${b.time[i]}\n`;
      } else {
        const big = BigInt(b.origin(i));
        out += `    (${big}..${big + BigInt(l - 1)}) -> (${d}..${d + l - 1}), ${b.time[i]}\n`;
      }
    }
    this.s.ascii(out);
  }
  endDevice(): void {
    this.s.str('\n');
  }
  end(): void {
    this.s.str('end superblock\n');
  }
}

/** Streaming JSON: one object, devices in id order, runs as objects. */
class JsonEmitter implements Emitter {
  private firstDevice = true;
  private firstRun = true;
  /** skipMappings: the mappings were not read, so they have no value (null), which [] would misstate as none. */
  constructor(
    private readonly s: OutputSink,
    private readonly skipMappings = false,
  ) {}
  begin(sb: SuperblockHeader): void {
    // Key names and types as docs/json.md: u64s (transactionId, originBegin) as decimal strings.
    const head = {
      uuid: sb.uuid,
      time: sb.time,
      transactionId: sb.transaction.toString(),
      flags: sb.flags,
      version: sb.version,
      dataBlockSize: sb.dataBlockSize,
      nrDataBlocks: sb.nrDataBlocks,
      heldRoot: sb.heldRoot || null, // block 0 is the superblock: 0 says none is held (docs/json.md: no value is null)
    };
    this.s.str(`{"superblock":${JSON.stringify(head)},"devices":[`);
  }
  beginDevice(d: DeviceDetails): void {
    this.s.str(
      `${this.firstDevice ? '' : ','}\n{"devId":${d.devId},"mappedBlocks":${d.mappedBlocks},"transactionId":"${d.transactionId}","creationTime":${d.creationTime},"snapshottedTime":${d.snapshottedTime},"mappings":${this.skipMappings ? 'null' : '['}`,
    );
    this.firstDevice = false;
    this.firstRun = true;
  }
  runs(b: RunBatch): void {
    let out = '';
    for (let i = 0; i < b.count; i++) {
      out += `${this.firstRun ? '\n' : ',\n'}{"originBegin":"${b.origin(i)}","dataBegin":${b.dataBegin[i]},"length":${b.length[i]},"time":${b.time[i]}}`;
      this.firstRun = false;
    }
    this.s.ascii(out);
  }
  endDevice(): void {
    this.s.str(this.skipMappings ? '}' : ']}');
  }
  end(): void {
    this.s.str('\n]}\n');
  }
}

function makeEmitter(format: DumpFormat, s: OutputSink, skipMappings: boolean): Emitter {
  switch (format) {
    case 'xml':
      return new XmlEmitter(s);
    case 'human_readable':
      return new HumanEmitter(s);
    case 'json':
      return new JsonEmitter(s, skipMappings);
    default:
      throw unknownFormat(format, DUMP_FORMATS);
  }
}

const DUMP_FORMATS: readonly DumpFormat[] = ['xml', 'human_readable', 'json'];

/** Writes the dump to `out`. Resolves once everything is written (not ended). */
export async function dump(md: ThinMetadata, out: SinkTarget, opts: DumpOptions = {}): Promise<void> {
  check.instance(md, ThinMetadata, 'metadata');
  opts = check.walk(opts, 'dump options');
  check.methods(out, 'out', 'a Writable', ['write', 'on']);
  if (opts.devIds !== undefined) {
    if (!Array.isArray(opts.devIds)) throw new UsageError('devIds must be an array of thin device ids');
    for (const id of opts.devIds as unknown[]) {
      // Not only the kernel's 24 bits: thin_restore writes larger ids, and thin_dump dumps them.
      if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) {
        throw new UsageError(`bad device id ${typeof id === 'string' ? `'${id}'` : String(id)}${typeof id === 'bigint' ? 'n' : ''} in devIds: thin device ids are numbers, integers 0..2^53-1`);
      }
    }
  }
  check.boolean(opts.skipMappings, 'skipMappings');
  const sink = new OutputSink(out, undefined, opts.signal);
  const e = makeEmitter(opts.format ?? 'xml', sink, opts.skipMappings === true);
  const sb = md.superblock;
  // Rows of the device table (in id order), not an object per device: a pool may hold 70,000.
  const table = await md.deviceTable({ signal: opts.signal });
  const wanted = opts.devIds ? new Set(opts.devIds) : undefined;
  let rows: Uint32Array;
  if (wanted) {
    const picked: number[] = [];
    for (let r = 0; r < table.count; r++) if (wanted.has(table.devId[r])) picked.push(r);
    rows = Uint32Array.from(picked);
  } else rows = Uint32Array.from({ length: table.count }, (_, r) => r);
  const ids = Float64Array.from(rows, (r) => table.devId[r]);
  let total = 0;
  if (!opts.skipMappings) for (let k = 0; k < rows.length; k++) total += table.mappedBlocks[rows[k]];

  e.begin({
    uuid: '',
    time: sb.time,
    transaction: sb.transactionId,
    flags: sb.flags,
    version: sb.version,
    dataBlockSize: sb.dataBlockSize,
    nrDataBlocks: md.nrDataBlocks,
    heldRoot: sb.heldRoot,
  });
  if (opts.skipMappings) {
    for (let k = 0; k < rows.length; k++) {
      throwIfAborted(opts.signal);
      e.beginDevice(deviceAt(table, rows[k]));
      e.endDevice();
      await sink.maybeFlush();
    }
  } else {
    // One walk over every selected device: roots are read in batches ahead,
    // which is what makes pools of many small devices fast.
    let done = 0;
    await md.walkDevices(
      ids,
      {
        begin: (k) => e.beginDevice(deviceAt(table, rows[k])),
        runs: (k, runs) => {
          e.runs(runs);
          if (opts.onProgress) {
            let n = 0;
            for (let i = 0; i < runs.count; i++) n += runs.length[i];
            done += n;
            opts.onProgress({ mappings: done, total, devId: ids[k] });
          }
          return sink.needsFlush() ? sink.maybeFlush() : undefined;
        },
        end: () => {
          e.endDevice();
          return sink.needsFlush() ? sink.maybeFlush() : undefined;
        },
      },
      { signal: opts.signal },
    );
  }
  e.end();
  await sink.flush();
}
