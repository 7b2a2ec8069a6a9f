/**
 * StreamVerifier: a push parser that checks everything a stream promises —
 * framing, every record's CRC, field ranges, record order, the end record's
 * counts and the SHA-256 of the whole stream — and hands back decoded records.
 * Chunks may split records anywhere; memory is one record (≤ 8 MiB of data)
 * beyond the chunk being parsed (reused for every record with reuseBuffers),
 * or none for data records with dataPieces. Used twice by a receive: once to
 * verify the whole input before touching the target, once more while
 * applying it (that pass checks a keyed GMAC the first computed instead of
 * the SHA-256: stream-mac.ts); both read data records in pieces.
 */
import { StreamError } from '../../errors';
import {
  crc32cOf,
  DATA_PREFIX_SIZE,
  decodeEndPayload,
  decodeHeaderPayload,
  digestSpec,
  decodeRecordHeader,
  DISCARD_PAYLOAD_SIZE,
  END_PAYLOAD_SIZE,
  type EndRecord,
  HEADER_FIXED_SIZE,
  MAX_DATA_BYTES,
  MAX_HEADER_PAYLOAD,
  readU64,
  RECORD_HEADER_SIZE,
  RECORD_MAGIC,
  RecordType,
  type StreamHeader,
} from './records';
import { SECTOR_SIZE } from '../../units';
import { crc32cFunction } from '../../native/binding';
import { newStreamHash, type StreamHash } from '../../native/stream-hash';
import { StreamMac, type StreamMacKey } from './stream-mac';

/** Where a record was found in the stream. @inline */
interface At {
  /** Byte offset of the record in the stream. */
  offset: number;
  /** Its sequence number (the header is 0). */
  seq: number;
}

/** A verified, decoded record, with where it was found. */
export type StreamRecord =
  | (At & {
      /** The header record. */
      type: 'header';
      /** What it says. */
      header: StreamHeader;
    })
  | (At & {
      /** A data record. */
      type: 'data';
      /** The virtual block it starts in. */
      block: number;
      /** Sectors into that block. */
      offsetSectors: number;
      /** Byte offset on the device. */
      start: number;
      /** The bytes. */
      data: Buffer;
    })
  | (At & {
      /** A discard record. */
      type: 'discard';
      /** First virtual block. */
      block: number;
      /** Number of blocks. */
      count: number;
      /** Byte offset on the device. */
      start: number;
      /** Byte length, clipped at the device's end. */
      length: number;
    })
  | (At & {
      /** The end record. */
      type: 'end';
      /** What it says. */
      end: EndRecord;
    });

/** A stream verified to its end. */
export interface VerifiedStream {
  /** Its header. */
  header: StreamHeader;
  /** Its end record. */
  end: EndRecord;
  /** SHA-256 (hex) of the stream before the end record: the stream's identity. */
  digest: string;
  /** Length of the whole stream, end record included. */
  bytes: number;
  /**
   * With VerifierOptions.mac and a SHA-256 digest (format versions 1 and 2):
   * the key and the GMAC tag of every byte of the stream, for a second pass
   * (`recheck`). Key material: never printed.
   * @internal
   */
  mac?: StreamMacKey & { tag: Buffer };
}

/** Options of StreamVerifier. */
export interface VerifierOptions {
  /** Called once the header record has been verified (e.g. to check the target early). */
  onHeader?: (h: StreamHeader) => void;
  /**
   * Assemble records split across chunks in buffers kept for the whole
   * stream instead of a new one each: memory stays flat (one record, two
   * with push()), but the records push() returns (their `data`) are valid
   * only until the next push(), those records() yields until the next one.
   * Give the same RecordBuffers to verifiers that run one after the other to
   * share them.
   */
  reuseBuffers?: boolean | RecordBuffers;
  /**
   * The caller keeps every chunk it pushes unchanged until hashedThrough()
   * says the digest has passed it (e.g. fileChunks' beforeReuse): the
   * digest then reads the chunks in place instead of a copy.
   */
  holdChunks?: boolean;
  /**
   * Also a keyed GMAC over every byte of the stream (VerifiedStream.mac; ~0.15 s per GiB on the JS thread),
   * unless the stream's digest is BLAKE3 (format versions 3 and 4), cheaper to compute again than the GMAC.
   * @internal
   */
  mac?: StreamMacKey;
  /**
   * A second pass over a stream verified before with `mac`: its GMAC is
   * checked instead of the SHA-256 (the end record must be the same too), so
   * the pass costs a tenth of the first. Without a `mac` in it (format
   * version 3, or no `mac` asked for), the digest is computed again; the
   * caller compares it with the first pass's.
   * @internal
   */
  recheck?: VerifiedStream;
  /**
   * Data records are not assembled (no 8 MiB record buffer, no copy): their
   * CRC runs over the pieces as they arrive. 'skip': their bytes are checked
   * and dropped (a verify pass; every check in the usual order, at the
   * record's end). 'emit': each piece is yielded at once as a `data` record
   * of its own (`start` and `data` the piece's; `block`/`offsetSectors` the
   * record's), after the record's fields but before its CRC is checked at its
   * end: for a second pass over a stream verified before, whose consumer
   * treats any later error as the input having changed.
   * @internal
   */
  dataPieces?: 'skip' | 'emit';
}

/**
 * The buffers a verifier with reuseBuffers assembles split records in: one
 * when records are taken one at a time (records()), two alternating for
 * push(), which can return a record completed in one while the next record
 * starts filling the other.
 */
export class RecordBuffers {
  private bufs: (Buffer | null)[] = [null, null];
  private turn = 0;

  /** A buffer of `len` bytes: the other one when `alternate`, else the same one again. */
  next(len: number, alternate: boolean): Buffer {
    if (alternate) this.turn ^= 1;
    let b = this.bufs[this.turn];
    if (!b || b.length < len) b = this.bufs[this.turn] = Buffer.allocUnsafeSlow(Math.max(len, Math.min(2 * (b?.length ?? 0), DATA_PREFIX_SIZE + MAX_DATA_BYTES)));
    return b.subarray(0, len);
  }
}

const MIN_HEADER_PAYLOAD = HEADER_FIXED_SIZE + 18;

/** The digest's ring: room for two 1 MiB input chunks (the one parsed, the one read ahead). */
const VERIFY_HASH_RING_BYTES = 2 << 20;

/** Checks a stream as its bytes arrive (CRCs, order, bounds, counts, digest) and decodes its records. */
export class StreamVerifier {
  private pos = 0;
  private seq = 0;
  private hdr = Buffer.alloc(RECORD_HEADER_SIZE);
  private hdrFill = 0;
  private payload: Buffer | null = null;
  private payloadFill = 0;
  private recOffset = 0;
  private recType = 0;
  // Fed as bytes are consumed (header once known not to be the end record's,
  // payload pieces as they arrive) and hashed on the addon's threads.
  // Its ring holds a few input chunks: callers await ready() before each.
  // Made when the header record is read (its version says which digest; the
  // header record's own bytes go in then). Null before, and on a recheck
  // pass: the GMAC (mac) stands in for it.
  private hash: StreamHash | null = null;
  private readonly recheck: (VerifiedStream & { mac: NonNullable<VerifiedStream['mac']> }) | null;
  // Fed every input chunk whole (end record included): cheaper than per record, the same bytes on both passes.
  // Dropped when the header says the digest is BLAKE3 (format versions 3 and 4): see completeRecord.
  private mac: StreamMac | null;
  private _header: StreamHeader | null = null;
  private blockBytes = 0;
  private lastEnd = 0;
  private lastDataBlock = -1;
  private counts = { dataBlocks: 0, discardBlocks: 0, dataBytes: 0 };
  private result: VerifiedStream | null = null;
  private readonly scratch: RecordBuffers | null;
  /** Stream bytes given to the digest (all but the end record's). */
  private hashed = 0;
  private eager = false;
  // A data record read in pieces (dataPieces): its length, the running CRC,
  // its 16-byte prefix and, once that is checked ('emit'), where its data starts.
  private streaming = false;
  private pieceLen = 0;
  private pieceCrc = 0;
  private readonly prefix = Buffer.alloc(DATA_PREFIX_SIZE);
  private pieceFields: { block: number; offsetSectors: number; start: number } | null = null;

  constructor(private readonly opts: VerifierOptions = {}) {
    const r = opts.reuseBuffers;
    this.scratch = r instanceof RecordBuffers ? r : r ? new RecordBuffers() : null;
    const before = opts.recheck;
    this.recheck = before?.mac ? { ...before, mac: before.mac } : null;
    const macKey = this.recheck?.mac ?? opts.mac;
    this.mac = macKey ? new StreamMac(macKey) : null;
  }

  /** The header once it has been verified, else null. */
  get header(): StreamHeader | null {
    return this._header;
  }

  /**
   * Resolves once `bytes` more can be pushed without the JS thread waiting
   * for the digest (hashed on its own thread) to catch up: await it between
   * chunks. Pushing without it is correct, it may only block.
   */
  ready(bytes: number): Promise<void> {
    return this.hash ? this.hash.ready(bytes) : Promise.resolve();
  }

  /**
   * Resolves once the digest has read the stream up to byte `position`: a
   * chunk held (holdChunks) that ends there may change again.
   */
  hashedThrough(position: number): Promise<void> {
    return this.hash ? this.hash.hashedThrough(Math.min(position, this.hashed)) : Promise.resolve();
  }

  /** Bytes consumed so far. */
  get position(): number {
    return this.pos;
  }

  private fail(reason: ConstructorParameters<typeof StreamError>[0], message: string): never {
    throw new StreamError(reason, `${message} (record ${this.seq} at byte ${this.recOffset})`, { offset: this.recOffset, record: this.seq });
  }

  /** Feeds bytes; returns the records completed by them, verified and decoded. */
  push(chunk: Buffer): StreamRecord[] {
    this.eager = true;
    try {
      return [...this.records(chunk)];
    } finally {
      this.eager = false;
    }
  }

  /**
   * Feeds bytes, lazily: each record is yielded as soon as it is complete,
   * and parsing goes on only when the next one is asked for. With
   * reuseBuffers a yielded record is valid until the next one is asked for
   * (one buffer then suffices); the caller may await between records.
   * Stopping before the end leaves the verifier unusable.
   */
  *records(chunk: Buffer): Generator<StreamRecord, void, undefined> {
    this.mac?.update(chunk);
    let i = 0;
    while (i < chunk.length) {
      if (this.result) {
        this.recOffset = this.pos;
        this.fail('trailing', `${chunk.length - i}+ bytes after the end record`);
      }
      if (this.streaming) {
        // A data record in pieces (dataPieces).
        const n = Math.min(this.pieceLen - this.payloadFill, chunk.length - i);
        const piece = chunk.subarray(i, i + n);
        this.pieceCrc = crc32cFunction()(piece, this.pieceCrc, true);
        this.hashBytes(piece, true);
        let data = piece;
        if (this.payloadFill < DATA_PREFIX_SIZE) {
          const k = Math.min(DATA_PREFIX_SIZE - this.payloadFill, n);
          piece.copy(this.prefix, this.payloadFill, 0, k);
          data = piece.subarray(k);
          if (this.payloadFill + k === DATA_PREFIX_SIZE && this.opts.dataPieces === 'emit') {
            this.pieceFields = this.dataFields(this.prefix, this.pieceLen - DATA_PREFIX_SIZE);
          }
        }
        // Where `data` starts in the record's data.
        const into = this.payloadFill + (n - data.length) - DATA_PREFIX_SIZE;
        this.payloadFill += n;
        i += n;
        this.pos += n;
        const f = this.pieceFields;
        if (f && data.length) yield { offset: this.recOffset, seq: this.seq, type: 'data', block: f.block, offsetSectors: f.offsetSectors, start: f.start + into, data };
        if (this.payloadFill === this.pieceLen) this.endPieces();
        continue;
      }
      if (this.payload === null) {
        // Record header.
        if (this.hdrFill === 0) this.recOffset = this.pos;
        const n = Math.min(RECORD_HEADER_SIZE - this.hdrFill, chunk.length - i);
        chunk.copy(this.hdr, this.hdrFill, i, i + n);
        this.hdrFill += n;
        i += n;
        this.pos += n;
        if (this.hdrFill < RECORD_HEADER_SIZE) return;
        const len = this.checkHeader();
        // The digest covers every byte before the end record (its CRC is checked later, in order).
        if (this.recType !== RecordType.End) this.hashBytes(this.hdr, false);
        this.payloadFill = 0;
        if (this.recType === RecordType.Data && this.opts.dataPieces) {
          this.streaming = true;
          this.pieceLen = len;
          this.pieceCrc = crc32cFunction()(this.hdr.subarray(0, 20), 0xffffffff, true);
          this.pieceFields = null;
          continue;
        }
        if (len === 0) {
          this.payload = Buffer.alloc(0);
        } else if (chunk.length - i >= len) {
          // Whole payload in this chunk: a view, no copy.
          this.payload = chunk.subarray(i, i + len);
          if (this.recType !== RecordType.End) this.hashBytes(this.payload, true);
          this.payloadFill = len;
          i += len;
          this.pos += len;
        } else if (this.scratch) {
          // push() returns records together: one may sit in a buffer while the next fills the other.
          this.payload = this.scratch.next(len, this.eager);
        } else {
          this.payload = Buffer.allocUnsafe(len);
        }
      } else {
        const n = Math.min(this.payload.length - this.payloadFill, chunk.length - i);
        chunk.copy(this.payload, this.payloadFill, i, i + n);
        if (this.recType !== RecordType.End) this.hashBytes(chunk.subarray(i, i + n), true);
        this.payloadFill += n;
        i += n;
        this.pos += n;
      }
      if (this.payload && this.payloadFill === this.payload.length) yield this.completeRecord();
    }
  }

  /** `inChunk`: a view into the pushed chunk (read in place when the caller holds chunks); else copied. */
  private hashBytes(b: Buffer, inChunk: boolean): void {
    // Before the header record is whole the digest is not chosen: completeRecord feeds that record.
    if (!this.hash) return;
    if (inChunk && this.opts.holdChunks) this.hash.updateHeld(b);
    else this.hash.update(b);
    this.hashed += b.length;
  }

  /** Call at the end of the input: the verified summary, or why the stream is not whole. */
  finish(): VerifiedStream {
    if (!this.result) {
      const partial = this.hdrFill > 0 || this.payload !== null || this.streaming;
      if (!partial) this.recOffset = this.pos;
      // Too short to reach the first record's checks: still tell "not a stream" from "cut short".
      const seen = this.seq === 0 && this.payload === null && !this.streaming ? this.hdrFill : 0;
      if (seen > 0 && !this.hdr.subarray(0, Math.min(seen, 4)).equals(RECORD_MAGIC.subarray(0, Math.min(seen, 4)))) {
        this.fail('magic', 'not a dmthin stream (bad record magic)');
      }
      this.fail('truncated', `stream ends after ${this.pos} bytes${partial ? ', in the middle of a record' : ''}, before a valid end record`);
    }
    return this.result;
  }

  /** Checks a record header before its payload is read; returns the payload length. */
  private checkHeader(): number {
    const h = this.hdr;
    if (!h.subarray(0, 4).equals(RECORD_MAGIC)) {
      if (this.seq === 0) this.fail('magic', 'not a dmthin stream (bad record magic)');
      this.fail('malformed', 'bad record magic');
    }
    const r = decodeRecordHeader(h);
    if (r.type < RecordType.Header || r.type > RecordType.End) this.fail('malformed', `unknown record type ${r.type}`);
    if (r.flags !== 0) this.fail('malformed', `unknown record flags 0x${r.flags.toString(16)}`);
    if (r.seq !== this.seq) this.fail('order', `sequence number ${r.seq}, expected ${this.seq}`);
    if ((this.seq === 0) !== (r.type === RecordType.Header)) this.fail('order', this.seq === 0 ? 'the first record is not a header' : 'a second header record');
    const len = r.length;
    const ok =
      r.type === RecordType.Header
        ? len >= MIN_HEADER_PAYLOAD && len <= MAX_HEADER_PAYLOAD
        : r.type === RecordType.Data
          ? len > DATA_PREFIX_SIZE && len <= DATA_PREFIX_SIZE + MAX_DATA_BYTES && (len - DATA_PREFIX_SIZE) % SECTOR_SIZE === 0
          : r.type === RecordType.Discard
            ? len === DISCARD_PAYLOAD_SIZE
            : len === END_PAYLOAD_SIZE;
    if (!ok) this.fail('malformed', `record of type ${r.type} with a payload of ${len} bytes`);
    this.recType = r.type;
    return len;
  }

  private completeRecord(): StreamRecord {
    const payload = this.payload!;
    this.payload = null;
    this.hdrFill = 0;
    const stored = this.hdr.readUInt32LE(20);
    if (crc32cOf([this.hdr.subarray(0, 20), payload]) !== stored) this.fail('crc', 'CRC-32C mismatch');
    const at: At = { offset: this.recOffset, seq: this.seq };
    const where = { offset: this.recOffset, record: this.seq };
    let rec: StreamRecord;
    switch (this.recType) {
      case RecordType.Header: {
        const header = decodeHeaderPayload(payload, where);
        if (!this.recheck) {
          const d = digestSpec(header.version);
          // The GMAC spares a second pass a second SHA-256 (~0.7 CPU s per GiB
          // here); BLAKE3's digest costs less than the GMAC (0.23 CPU s per GiB
          // on the addon's threads against ~0.16 on the JS thread), so a
          // version-3 stream gets none: the second pass recomputes its digest
          // and the caller compares it with this pass's (VerifiedStream.digest).
          if (d.algorithm === 'blake3') this.mac = null;
          this.hash = newStreamHash(VERIFY_HASH_RING_BYTES, d.segmentBytes, d.algorithm);
          this.hash.update(this.hdr);
          this.hash.update(payload);
          this.hashed = this.hdr.length + payload.length;
        }
        this._header = header;
        this.blockBytes = header.dataBlockSize * SECTOR_SIZE;
        rec = { ...at, type: 'header', header };
        break;
      }
      case RecordType.Data:
        rec = this.dataRecord(at, payload);
        break;
      case RecordType.Discard:
        rec = this.discardRecord(at, payload);
        break;
      default:
        rec = this.endRecord(at, payload);
    }
    this.seq++;
    if (rec.type === 'header') this.opts.onHeader?.(rec.header);
    return rec;
  }

  private dataRecord(at: At, p: Buffer): StreamRecord {
    const { block, offsetSectors, start } = this.dataFields(p, p.length - DATA_PREFIX_SIZE);
    return { ...at, type: 'data', block, offsetSectors, start, data: p.subarray(DATA_PREFIX_SIZE) };
  }

  /** The end of a data record read in pieces: its CRC, then (if not done at its prefix) its fields. */
  private endPieces(): void {
    this.streaming = false;
    this.hdrFill = 0;
    if (~this.pieceCrc >>> 0 !== this.hdr.readUInt32LE(20)) this.fail('crc', 'CRC-32C mismatch');
    if (!this.pieceFields) this.dataFields(this.prefix, this.pieceLen - DATA_PREFIX_SIZE);
    this.pieceFields = null;
    this.seq++;
  }

  /** Checks a data record's prefix (`bytes` of data follow it) and counts it; where it starts. */
  private dataFields(p: Buffer, bytes: number): { block: number; offsetSectors: number; start: number } {
    const h = this._header!;
    const block = readU64(p, 0);
    const offsetSectors = p.readUInt32LE(8);
    const sectors = p.readUInt32LE(12);
    if (block === null) this.fail('malformed', 'data record: block number beyond 2^53');
    if (offsetSectors >= h.dataBlockSize) this.fail('malformed', `data record: offset ${offsetSectors} sectors is outside a ${h.dataBlockSize}-sector block`);
    if (sectors * SECTOR_SIZE !== bytes) this.fail('malformed', `data record: says ${sectors} sectors but carries ${bytes} bytes`);
    const start = block * this.blockBytes + offsetSectors * SECTOR_SIZE;
    const end = start + bytes;
    if (!Number.isSafeInteger(end) || end > h.deviceSize) {
      // Named by block where its bytes are past 2^53 (a byte offset there would print rounded).
      const where = Number.isSafeInteger(end) ? `bytes [${start}, ${end})` : `block ${block} (byte ${BigInt(block) * BigInt(this.blockBytes) + BigInt(offsetSectors * SECTOR_SIZE)} on)`;
      this.fail('malformed', `data record: ${where} ${Number.isSafeInteger(end) ? 'are' : 'is'} beyond the device (${h.deviceSize} bytes)`);
    }
    if (start < this.lastEnd) this.fail('order', `data record at byte ${start} overlaps or precedes the previous record (ends at ${this.lastEnd})`);
    const last = Math.floor((end - 1) / this.blockBytes);
    this.counts.dataBlocks += last - block + 1 - (block === this.lastDataBlock ? 1 : 0);
    this.counts.dataBytes += bytes;
    this.lastDataBlock = last;
    this.lastEnd = end;
    return { block, offsetSectors, start };
  }

  private discardRecord(at: At, p: Buffer): StreamRecord {
    const h = this._header!;
    const block = readU64(p, 0);
    const count = readU64(p, 8);
    if (block === null || count === null || count === 0) this.fail('malformed', 'discard record: bad block range');
    const blocks = Math.ceil(h.deviceSize / this.blockBytes);
    if (block + count > blocks) this.fail('malformed', `discard record: blocks [${block}, ${block + count}) are beyond the device (${blocks} blocks)`);
    const start = block * this.blockBytes;
    if (start < this.lastEnd) this.fail('order', `discard record at byte ${start} overlaps or precedes the previous record (ends at ${this.lastEnd})`);
    const end = Math.min(h.deviceSize, (block + count) * this.blockBytes);
    this.counts.discardBlocks += count;
    this.lastEnd = end;
    return { ...at, type: 'discard', block, count, start, length: end - start };
  }

  private endRecord(at: At, p: Buffer): StreamRecord {
    const end = decodeEndPayload(p, { offset: at.offset, record: at.seq });
    const want = { records: this.seq, streamBytes: at.offset, ...this.counts };
    for (const [k, v] of Object.entries(want)) {
      const got = end[k as keyof typeof want];
      if (got !== v) this.fail('counts', `end record says ${k} = ${got}, the stream has ${v}`);
    }
    const bytes = at.offset + RECORD_HEADER_SIZE + END_PAYLOAD_SIZE;
    const before = this.recheck;
    if (before || !this.hash) {
      const tag = this.mac?.tag();
      if (!before || !tag?.equals(before.mac.tag) || !end.sha256.equals(before.end.sha256) || bytes !== before.bytes) {
        this.fail('digest', 'the stream differs from the one verified before (its keyed GMAC or end record)');
      }
      this.result = { header: this._header!, end, digest: before.digest, bytes };
    } else {
      const digest = this.hash.digest();
      if (!digest.equals(end.sha256)) this.fail('digest', `the stream's digest (format version ${this._header!.version}, docs/stream-format.md §6) does not match the end record`);
      const mac = this.mac && this.opts.mac ? { ...this.opts.mac, tag: this.mac.tag() } : undefined;
      this.result = { header: this._header!, end, digest: digest.toString('hex'), bytes, ...(mac ? { mac } : {}) };
    }
    return { ...at, type: 'end', end };
  }
}
