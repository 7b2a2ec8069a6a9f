/**
 * StreamEncoder: turns a header, data and discard ranges into sealed records,
 * keeping the counts and the running SHA-256 that the end record carries.
 * It checks the invariants a receiver checks (order, bounds), so a bug in a
 * sender fails here rather than in someone's restore.
 */
import { UsageError } from '../../errors';
import {
  encodeDataPrefix,
  encodeDiscardPayload,
  encodeEndPayload,
  encodeHeaderPayload,
  encodeRecord,
  type EndRecord,
  digestSpec,
  FORMAT_VERSION,
  FORMAT_VERSIONS,
  MAX_DATA_BYTES,
  RecordType,
  type StreamHeader,
} from './records';
import { SECTOR_SIZE } from '../../units';
import { newStreamHash, type StreamHash } from '../../native/stream-hash';

/** Record header and data prefix: what a data record adds to its data. */
const RECORD_OVERHEAD = 64;

/** A StreamHeader whose version may be left out (default: FORMAT_VERSION). */
export type StreamHeaderInit = Omit<StreamHeader, 'version'> & {
  /** Stream format version (default FORMAT_VERSION, 4; an older one for a receiver that reads only that). */
  version?: number;
};

/** Encodes one stream's records: header, data and discards in ascending order, then the end record. */
export class StreamEncoder {
  /** The header the stream starts with. */
  readonly header: StreamHeader;
  /** Bytes per data block. */
  readonly blockBytes: number;
  private seq = 0;
  // Hashed on the addon's threads: a sender awaits ready() before a large record.
  private readonly hash: StreamHash;
  private lastEnd = 0;
  private lastDataBlock = -1;
  private ended = false;
  /** Counters so far (what the end record says: the end record itself is not counted). */
  readonly counts = {
    /** Records so far. */
    records: 0,
    /** Virtual blocks carried by data records. */
    dataBlocks: 0,
    /** Virtual blocks covered by discard records. */
    discardBlocks: 0,
    /** Data bytes carried by data records. */
    dataBytes: 0,
    /** Stream bytes so far. */
    streamBytes: 0,
  };

  constructor(header: StreamHeaderInit) {
    this.header = { version: FORMAT_VERSION, ...header };
    if (!FORMAT_VERSIONS.includes(this.header.version)) throw new UsageError(`stream format version ${this.header.version} cannot be written (versions: ${FORMAT_VERSIONS.join(', ')})`);
    const d = digestSpec(this.header.version);
    this.hash = newStreamHash(undefined, d.segmentBytes, d.algorithm);
    this.blockBytes = this.header.dataBlockSize * SECTOR_SIZE;
  }

  private live(): void {
    if (this.ended) throw new UsageError('stream already ended');
    if (this.seq === 0) throw new UsageError('the header record comes first, and only once');
  }

  private emit(type: RecordType, payload: Uint8Array[], held = false): Buffer[] {
    if (this.ended) throw new UsageError('stream already ended');
    if ((this.seq === 0) !== (type === RecordType.Header)) throw new UsageError('the header record comes first, and only once');
    const parts = encodeRecord(type, this.seq++, payload);
    // The end record is not part of the digest (it carries it).
    if (type === RecordType.End) return parts;
    for (const p of parts) {
      // Held data is hashed in place; the small header and prefix are copied (cheaper than a reference).
      if (held && p.length > RECORD_OVERHEAD) this.hash.updateHeld(p);
      else this.hash.update(p);
      this.counts.streamBytes += p.length;
    }
    this.counts.records++;
    return parts;
  }

  /**
   * Resolves once a record carrying `bytes` of data can be encoded without
   * waiting for the digest to catch up (call it between records; encoding
   * without it is correct, only the JS thread may then wait).
   */
  ready(bytes: number): Promise<void> {
    return this.hash.ready(bytes + RECORD_OVERHEAD);
  }

  /** Resolves once the stream's first `position` bytes are hashed: data given as held up to there may change again. */
  hashedThrough(position: number): Promise<void> {
    return this.hash.hashedThrough(position);
  }

  /** The header record; call first. */
  start(): Buffer[] {
    return this.emit(RecordType.Header, [encodeHeaderPayload(this.header)]);
  }

  /**
   * A data record: `data` (a whole number of sectors, at most 8 MiB) at
   * virtual block `block`, `offsetSectors` into it. Ranges must ascend.
   * @param held - the caller never changes `data` afterwards: it is hashed
   *   in place later instead of copied (a send's freshly read batch).
   */
  data(block: number, offsetSectors: number, data: Uint8Array, held = false): Buffer[] {
    this.live();
    const start = block * this.blockBytes + offsetSectors * SECTOR_SIZE;
    const end = start + data.length;
    if (data.length === 0 || data.length % SECTOR_SIZE !== 0 || data.length > MAX_DATA_BYTES) throw new UsageError(`bad data record length ${data.length}`);
    if (offsetSectors < 0 || offsetSectors >= this.header.dataBlockSize) throw new UsageError(`bad offset ${offsetSectors} in block`);
    if (start < this.lastEnd || end > this.header.deviceSize) throw new UsageError(`data range [${start}, ${end}) out of order or beyond the device`);
    const first = block;
    const last = Math.floor((end - 1) / this.blockBytes);
    this.counts.dataBlocks += last - first + 1 - (first === this.lastDataBlock ? 1 : 0);
    this.lastDataBlock = last;
    this.counts.dataBytes += data.length;
    this.lastEnd = end;
    return this.emit(RecordType.Data, [encodeDataPrefix(block, offsetSectors, data.length / SECTOR_SIZE), data], held);
  }

  /** A discard record: `count` blocks from `block` read back as zeros (clipped at the device's end). */
  discard(block: number, count: number): Buffer[] {
    this.live();
    const start = block * this.blockBytes;
    const blocks = Math.ceil(this.header.deviceSize / this.blockBytes);
    if (count < 1 || start < this.lastEnd || block + count > blocks) throw new UsageError(`discard of blocks [${block}, ${block + count}) out of order or beyond the device`);
    this.counts.discardBlocks += count;
    this.lastEnd = Math.min(this.header.deviceSize, (block + count) * this.blockBytes);
    return this.emit(RecordType.Discard, [encodeDiscardPayload(block, count)]);
  }

  /** The end record: counts and the digest of everything before it. */
  finish(): {
    /** The end record's bytes. */
    parts: Buffer[];
    /** What it says. */
    end: EndRecord;
  } {
    const end: EndRecord = { ...this.counts, sha256: this.hash.digest() };
    const parts = this.emit(RecordType.End, [encodeEndPayload(end)]);
    this.ended = true;
    return { parts, end };
  }

  /** Gives the stream up (an error ends it): the digest thread stops and lets go of the data it holds. */
  abort(): void {
    this.hash.abort();
  }
}
