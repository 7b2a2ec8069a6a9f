/**
 * An output buffer for formatters that print millions of lines: text is
 * copied into large chunks that go to the Writable with backpressure.
 *
 * A write that fails (ENOSPC, EIO, EPIPE...) reaches Node as a write callback
 * error and an 'error' event, never as a throw; the sink records the first one
 * and rethrows it from the next maybeFlush()/flush(), so a formatter stops at
 * the first lost byte. flush() waits for the last chunk's callback: a failure
 * of the final write is seen too (a pipe writes asynchronously).
 */
import type * as Fs from 'node:fs';
import type * as Net from 'node:net';
import { DmthinError, SystemCallError, throwIfAborted, unlessAborted } from '../errors';
import { FdWriter } from './fd-writer';

/**
 * What the sink needs of its output: a stream.Writable, or the CLI's stdout
 * writer (fd-writer.ts).
 */
export interface SinkTarget {
  /** Queues bytes; `cb` runs once they are written (with the error if not). False: wait for 'drain'. */
  write(chunk: Uint8Array, cb: (e?: Error | null) => void): boolean;
  /** A write failed (the sink keeps the first error and stops). */
  on(event: 'error', listener: (e: Error) => void): unknown;
  /** 'drain': ready for more after write() returned false; 'close': gone. */
  on(event: 'drain' | 'close', listener: () => void): unknown;
  /** Removes a listener added with on(). */
  off(event: 'error' | 'drain' | 'close', listener: () => void): unknown;
  /** write() returned false and 'drain' has not come yet. */
  readonly writableNeedDrain: boolean;
  /** The target failed or was closed: nothing more is written. */
  readonly destroyed: boolean;
  /** True: done with a chunk once its write has called back (see releasesChunks()). */
  readonly releasesChunks?: boolean;
}

const CHUNK = 1 << 18;

/** The length of an OutputSink's chunks: what its `chunks` source hands out. */
export const OUTPUT_CHUNK_BYTES = CHUNK;

/**
 * Whether `out` is done with a chunk once its write callback has run, so the
 * chunk can be reused: true of writers that copy the bytes to the kernel
 * before calling back (the CLI's FdWriter, fs.WriteStream, net.Socket and a
 * TTY). Any other Writable may keep the very Buffer after its callback (a
 * PassThrough pushes it to its readable side; a collector keeps it in an
 * array): reusing it there rewrote bytes already handed on.
 */
function releasesChunks(out: SinkTarget): boolean {
  if (out instanceof FdWriter || out.releasesChunks === true) return true;
  // Loaded here, not at start-up: node:net and fs's streams cost a tiny command ~6 ms (see fd-writer.ts).
  const { WriteStream } = require('node:fs') as typeof Fs;
  const { Socket } = require('node:net') as typeof Net;
  return out instanceof WriteStream || out instanceof Socket;
}

/**
 * "0000".."9999" as bytes: four digits per division when printing numbers.
 * Built on first use (a division per digit took 3-6 ms of every command's
 * start-up), a digit at a time from the last: entries 0-9, then nine copies
 * of that block with their tens digit set, and so on: ~10,000 byte stores
 * and 27 block copies. A word per entry in four nested loops took 1.6-2.0 ms
 * of a tiny delta's start-up in the bench VM (interpreted); this 0.4-0.6.
 */
let digits4: Uint8Array | null = null;

function makeDigits4(): Uint8Array {
  const t = new Uint8Array(40000).fill(0x30);
  for (let d = 1; d < 10; d++) t[4 * d + 3] = 0x30 + d;
  // n entries are done; byte `at` of each entry is the digit being added.
  for (let n = 10, at = 2; n < 10000; n *= 10, at--) {
    for (let v = 1; v < 10; v++) {
      t.copyWithin(4 * n * v, 0, 4 * n);
      for (let i = 4 * n * v + at, end = 4 * n * (v + 1); i < end; i += 4) t[i] = 0x30 + v;
    }
  }
  digits4 = t;
  return t;
}

/** Writes 0 <= m < 10000 without leading zeros at p; returns the end. */
function putBelow10000(buf: Uint8Array, DIGITS4: Uint8Array, p: number, m: number): number {
  const k = m << 2;
  if (m >= 1000) {
    buf[p] = DIGITS4[k];
    buf[p + 1] = DIGITS4[k + 1];
    buf[p + 2] = DIGITS4[k + 2];
    buf[p + 3] = DIGITS4[k + 3];
    return p + 4;
  }
  if (m >= 100) {
    buf[p] = DIGITS4[k + 1];
    buf[p + 1] = DIGITS4[k + 2];
    buf[p + 2] = DIGITS4[k + 3];
    return p + 3;
  }
  if (m >= 10) {
    buf[p] = DIGITS4[k + 2];
    buf[p + 1] = DIGITS4[k + 3];
    return p + 2;
  }
  buf[p] = 48 + m;
  return p + 1;
}

/** Writes 0 <= m < 10000 as exactly four digits at p. */
function put4(buf: Uint8Array, DIGITS4: Uint8Array, p: number, m: number): void {
  const k = m << 2;
  buf[p] = DIGITS4[k];
  buf[p + 1] = DIGITS4[k + 1];
  buf[p + 2] = DIGITS4[k + 2];
  buf[p + 3] = DIGITS4[k + 3];
}

/** Writes 0 <= m < 10^8 as exactly eight digits at p. */
function put8(buf: Uint8Array, DIGITS4: Uint8Array, p: number, m: number): void {
  const hi = (m / 10000) >>> 0;
  put4(buf, DIGITS4, p, hi);
  put4(buf, DIGITS4, p + 4, m - hi * 10000);
}

/** Writes 0 <= m < 2^32 in decimal at p; returns the end. */
function putU32(buf: Uint8Array, DIGITS4: Uint8Array, p: number, m: number): number {
  if (m < 10000) return putBelow10000(buf, DIGITS4, p, m);
  if (m < 100000000) {
    const hi = (m / 10000) >>> 0;
    p = putBelow10000(buf, DIGITS4, p, hi);
    put4(buf, DIGITS4, p, m - hi * 10000);
    return p + 4;
  }
  const hi = (m / 100000000) >>> 0; // <= 42
  p = putBelow10000(buf, DIGITS4, p, hi);
  const lo = m - hi * 100000000;
  put8(buf, DIGITS4, p, lo);
  return p + 8;
}

/**
 * A constant ASCII string for OutputSink.tag: its bytes as little-endian
 * 32-bit words, so a tag of a dump line costs ~9 stores instead of ~34 (XML
 * formatting of a 4M-mapping dump: ~2x faster than a byte loop).
 */
export class AsciiTag {
  readonly length: number;
  readonly words: Int32Array;
  constructor(s: string) {
    this.length = s.length;
    const bytes = new Uint8Array(Math.ceil(s.length / 4) * 4);
    for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
    this.words = new Int32Array(bytes.length / 4);
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < this.words.length; i++) this.words[i] = view.getInt32(4 * i, true);
  }
}

/** The ASCII bytes of a constant string, for OutputSink.tag. */
export function asciiTag(s: string): AsciiTag {
  return new AsciiTag(s);
}

/** A tag writes whole words: up to 3 bytes past its end, overwritten by what follows. */
const TAG_SLACK = 4;

export class OutputSink {
  /**
   * The current chunk and the write position in it. Formatters on a hot path
   * call room(n) and then write bytes at `pos` themselves (tag(), uint()),
   * which allocates nothing per line: building lines as strings made a third
   * of a 10M-mapping dump's time garbage collection.
   */
  buf: Buffer;
  pos = 0;
  /** A view of `buf` for tag()'s word stores (replaced with buf). */
  private view: DataView;
  private error: Error | undefined;
  private last: Promise<void> = Promise.resolve();
  /** Chunks the stream is done with, reused: fresh ones each waited for a GC (~20 MiB of a dump's peak). */
  private readonly spare: (typeof this.buf)[] = [];
  /** See releasesChunks(): false, every chunk is a fresh Buffer. */
  private readonly reuse: boolean;
  /** Chunks to be reused that the stream has not called back for yet. */
  private unreturned = 0;
  /** Wakes a maybeFlush() waiting for a chunk to come back. */
  private wake: (() => void) | undefined;
  /**
   * A chunk went to the stream since the last wait for 'drain'. ensure()
   * hands chunks over without waiting (it is synchronous), so a writer that
   * makes room for whole records before each may never fill a chunk to the
   * brim: maybeFlush() must wait for those too, or a slow reader lets the
   * stream's queue grow with the output (a 3M-mapping XML dump into a pipe
   * reached 282 MiB).
   */
  private unwaited = false;

  /**
   * `name`: how messages call the output (default: stdout for descriptor 1,
   * else "the output"). `signal`: ends a wait for the output (a reader that
   * stopped reading, a write whose callback never comes) with AbortError.
   * `chunks`: where new chunks come from, each OUTPUT_CHUNK_BYTES long
   * (default: Buffer.allocUnsafe; ls's large tables take them from a
   * huge-page mapping, thin/ls.ts).
   */
  constructor(
    private readonly out: SinkTarget,
    // Not `out === process.stdout`: reading process.stdout creates it (see fd-writer.ts).
    private readonly name = (out as { fd?: unknown }).fd === 1 ? 'stdout' : undefined,
    private readonly signal?: AbortSignal,
    private readonly chunks: () => Buffer = () => Buffer.allocUnsafe(CHUNK),
  ) {
    this.buf = this.newChunk();
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.length);
    out.on('error', (e) => this.fail(e));
    this.reuse = releasesChunks(out);
  }

  private newChunk(): Buffer {
    const b = this.chunks();
    if (b.length !== CHUNK) throw new RangeError(`an output chunk is ${CHUNK} bytes, not ${b.length}`);
    return b;
  }

  private fail(e: Error): void {
    this.error ??= e;
  }

  private check(): void {
    if (this.error) throw outputError(this.error, this.name);
  }

  /** Room for at least n more bytes (flushes synchronously into the stream's queue). */
  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    this.queue();
    if (n > this.buf.length) this.setBuf(Buffer.allocUnsafe(n));
  }

  private setBuf(b: Buffer): void {
    this.buf = b;
    this.view = new DataView(b.buffer, b.byteOffset, b.length);
  }

  private queue(): void {
    if (this.pos === 0) return;
    const full = this.buf;
    const chunk = full.subarray(0, this.pos);
    const reused = this.reuse && full.length === CHUNK;
    if (reused) this.unreturned++;
    this.last = new Promise<void>((resolve) => {
      try {
        this.out.write(chunk, (e) => {
          if (e) this.fail(e);
          // Written: the stream holds it no more.
          else if (reused && this.spare.length < 4) this.spare.push(full);
          if (reused) this.returned();
          resolve();
        });
      } catch (e) {
        // A write() that throws (a caller's Writable) is the output's failure, reported by the next
        // check; thrown here it rejected a promise no one awaits, and no callback ever came.
        this.fail(e instanceof Error ? e : new Error(String(e)));
        if (reused) this.returned();
        resolve();
      }
    });
    this.setBuf((full.length === CHUNK && this.spare.pop()) || (full.length > CHUNK ? Buffer.allocUnsafe(full.length) : this.newChunk()));
    this.pos = 0;
    this.unwaited = true;
  }

  private returned(): void {
    this.unreturned--;
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Makes room for at least n more bytes at `pos` (and a tag's slack past them). */
  room(n: number): void {
    this.ensure(n + TAG_SLACK);
  }

  /** Appends a constant (asciiTag); the caller made room. */
  tag(t: AsciiTag): void {
    const view = this.view;
    const w = t.words;
    const p = this.pos;
    for (let i = 0; i < w.length; i++) view.setInt32(p + 4 * i, w[i], true);
    this.pos = p + t.length;
  }

  /** Appends a non-negative integer below 2^53 in decimal; the caller made room (16 bytes). */
  uint(n: number): void {
    const d4 = digits4 ?? makeDigits4();
    if (n < 0x100000000) {
      this.pos = putU32(this.buf, d4, this.pos, n >>> 0);
      return;
    }
    // 2^32 <= n < 2^53: the digits above the last eight, then those eight.
    const hi = Math.floor(n / 100000000);
    const lo = n - hi * 100000000;
    const buf = this.buf;
    const p = putU32(buf, d4, this.pos, hi);
    put8(buf, d4, p, lo);
    this.pos = p + 8;
  }

  str(s: string): void {
    const n = Buffer.byteLength(s);
    this.ensure(n);
    this.pos += this.buf.write(s, this.pos);
  }

  /**
   * Text known to be ASCII (numbers, tags): one latin1 copy, no UTF-8 pass.
   * Building a batch of lines as one string and writing it here is the
   * fastest path in V8 (faster than writing digits byte by byte).
   */
  ascii(s: string): void {
    this.ensure(s.length);
    this.pos += this.buf.write(s, this.pos, 'latin1');
  }

  /**
   * Whether maybeFlush() has work (a full chunk or an error to report): lets
   * a caller printing many small records skip an await per record.
   */
  needsFlush(): boolean {
    return this.unwaited || this.pos >= CHUNK - 4096 || this.error !== undefined;
  }

  /** Hands full chunks to the stream; waits if the stream asks us to. */
  async maybeFlush(): Promise<void> {
    this.check();
    if (this.pos >= CHUNK - 4096) this.queue();
    if (this.unwaited) await this.drained();
    // Two chunks out and none back: wait for one. A writer that writes at
    // once (a file, /dev/null) calls back a tick later, and a formatter whose
    // awaits all settle at once never gave it that tick, so each chunk was a
    // fresh one until the 1 MiB high-water mark made it wait: ~5 chunks of
    // 64 pages, each a fault (~11 us in the bench VM) where 2 chunks serve.
    while (this.unreturned >= 2 && this.spare.length === 0) {
      await unlessAborted(new Promise<void>((resolve) => (this.wake = resolve)), this.signal);
      this.check();
    }
  }

  private async drained(): Promise<void> {
    this.unwaited = false;
    const s = this.out;
    if (!s.writableNeedDrain) return;
    if (s.destroyed) throw outputError(this.error ?? closedEarly(), this.name);
    // 'error' or 'close' instead of 'drain': the stream is gone, no 'drain' follows.
    await unlessAborted(
      new Promise<void>((resolve) => {
        const done = (): void => {
          s.off('drain', done);
          s.off('error', done);
          s.off('close', done);
          resolve();
        };
        s.on('drain', done);
        s.on('error', done);
        s.on('close', done);
      }),
      this.signal,
    );
    if (s.destroyed && !this.error) this.fail(closedEarly());
    this.check();
  }

  /** Everything written, and its last write completed without an error. */
  async flush(): Promise<void> {
    this.check();
    this.queue();
    await this.drained();
    await unlessAborted(this.last, this.signal);
    this.check();
  }
}

/** How outputError's message ends; the CLI replaces it when the command's work stands (CliContext.done). */
export const OUTPUT_INCOMPLETE = '; the output is incomplete';

/**
 * A write error as a SystemCallError with Node's code (EPIPE stays EPIPE: the
 * CLI ends quietly on it).
 */
/** The output stream was destroyed (closed) before all of it was written: as a write to a gone reader fails. */
function closedEarly(): NodeJS.ErrnoException {
  return Object.assign(new Error('the output stream was closed before the whole output was written'), { code: 'EPIPE', syscall: 'write' });
}

export function outputError(e: unknown, path?: string): DmthinError {
  if (e instanceof DmthinError) return e;
  const x = e as NodeJS.ErrnoException;
  // A write to a stream already destroyed is Node's ERR_STREAM_DESTROYED, no errno: the output went away, as EPIPE says.
  const code = x?.code === 'ERR_STREAM_DESTROYED' ? 'EPIPE' : typeof x?.code === 'string' && x.code !== '' ? x.code : 'EIO';
  const where = path ?? (typeof x?.path === 'string' ? x.path : 'the output');
  const why = (x?.message ?? String(e)).replace(/^[A-Z]+: /, '').replace(/, write$/, '');
  return new SystemCallError(code, `cannot write ${where}: ${why}${OUTPUT_INCOMPLETE}`, {
    syscall: x?.syscall ?? 'write',
    ...(path ?? x?.path ? { path: path ?? x.path } : {}),
    cause: e,
  });
}
