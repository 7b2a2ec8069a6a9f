/**
 * ExtentStore: the list of ranges a send will carry, kept compactly so that
 * the metadata snapshot can be released before the (long) data copy. 24 bytes
 * per extent in memory up to a limit, then appended to a temp file; read back
 * in order. Adjacent extents that continue each other are merged on the way in.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UsageError } from '../../errors';

export type SendExtentKind = 'data' | 'zero';

/** A run of virtual blocks [begin, begin+length) to send as data, or as reading back zeros. */
export interface SendExtent {
  kind: SendExtentKind;
  begin: number;
  length: number;
  /** For data: the first block in the data source's addressing (virtual or pool data block). */
  source: number;
}

const RECORD = 24; // f64 begin, f64 length, f64 source (-1 = zero)
const CHUNK_EXTENTS = 1 << 14;

export interface ExtentStoreOptions {
  /** Bytes kept in memory before spilling to a temp file (default 16 MiB). */
  memoryLimit?: number;
  /** Where the temp file goes (default os.tmpdir()). */
  tmpDir?: string;
}

export class ExtentStore implements AsyncDisposable {
  private chunks: Float64Array[] = [];
  private cur = new Float64Array(CHUNK_EXTENTS * 3);
  private n = 0; // extents in cur
  private last: SendExtent | null = null;
  private file: FileHandle | null = null;
  private dir: string | null = null;
  private fileBytes = 0;
  private sealed = false;
  /** Totals, for progress bars. */
  readonly totals = { extents: 0, dataBlocks: 0, zeroBlocks: 0 };

  constructor(private readonly opts: ExtentStoreOptions = {}) {}

  /** Appends an extent (in ascending block order). */
  async add(e: SendExtent): Promise<void> {
    if (this.sealed) throw new UsageError('ExtentStore is sealed');
    if (e.length <= 0) return;
    if (e.kind === 'data') this.totals.dataBlocks += e.length;
    else this.totals.zeroBlocks += e.length;
    const l = this.last;
    if (l && l.kind === e.kind && l.begin + l.length === e.begin && (e.kind === 'zero' || l.source + l.length === e.source)) {
      l.length += e.length;
      return;
    }
    if (l) await this.put(l);
    this.last = { ...e };
  }

  private async put(e: SendExtent): Promise<void> {
    const i = this.n * 3;
    this.cur[i] = e.begin;
    this.cur[i + 1] = e.length;
    this.cur[i + 2] = e.kind === 'data' ? e.source : -1;
    this.totals.extents++;
    if (++this.n === CHUNK_EXTENTS) {
      this.chunks.push(this.cur);
      this.cur = new Float64Array(CHUNK_EXTENTS * 3);
      this.n = 0;
      if (this.chunks.length * CHUNK_EXTENTS * RECORD > (this.opts.memoryLimit ?? 16 << 20)) await this.spill();
    }
  }

  private async spill(): Promise<void> {
    if (!this.file) {
      this.dir = mkdtempSync(join(this.opts.tmpDir ?? tmpdir(), 'dmthin-extents-'));
      this.file = await open(join(this.dir, 'extents'), 'w+', 0o600);
    }
    for (const c of this.chunks) {
      const b = Buffer.from(c.buffer, c.byteOffset, c.byteLength);
      await this.file.write(b, 0, b.length, this.fileBytes);
      this.fileBytes += b.length;
    }
    this.chunks = [];
  }

  /** No more extents; flushes the pending one. */
  async seal(): Promise<void> {
    if (this.sealed) return;
    if (this.last) await this.put(this.last);
    this.last = null;
    this.sealed = true;
  }

  /** The extents in order (seal first). May be iterated more than once. */
  async *[Symbol.asyncIterator](): AsyncGenerator<SendExtent> {
    if (!this.sealed) throw new UsageError('ExtentStore: seal() before reading');
    const emit = function* (c: Float64Array, count: number): Generator<SendExtent> {
      for (let i = 0; i < count * 3; i += 3) {
        const s = c[i + 2];
        yield { kind: s < 0 ? 'zero' : 'data', begin: c[i], length: c[i + 1], source: s < 0 ? 0 : s };
      }
    };
    if (this.file) {
      const buf = new Float64Array(CHUNK_EXTENTS * 3);
      const bytes = Buffer.from(buf.buffer);
      for (let off = 0; off < this.fileBytes; off += bytes.length) {
        const { bytesRead } = await this.file.read(bytes, 0, Math.min(bytes.length, this.fileBytes - off), off);
        yield* emit(buf, bytesRead / RECORD);
      }
    }
    for (const c of this.chunks) yield* emit(c, CHUNK_EXTENTS);
    yield* emit(this.cur, this.n);
  }

  /** True once extents went to a temp file. */
  get spilled(): boolean {
    return this.file !== null;
  }

  async close(): Promise<void> {
    const f = this.file;
    this.file = null;
    await f?.close().catch(() => undefined);
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    this.dir = null;
    this.chunks = [];
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
