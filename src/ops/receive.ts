/**
 * The receiving side. Nothing is written to the target until the whole
 * stream has been verified: every record's CRC, the end record's counts and
 * the stream's digest, the target's size and (for an incremental stream)
 * that the target holds the stream's base, at the same size. A seekable input
 * file is verified in place; anything else is spooled to a temp file while it
 * is verified. Then the same open file is read again and applied (data
 * written O_DIRECT, discards as discards or zeros), the target is fsynced and
 * the new state recorded. The target is recorded as `pending` only right
 * before its first write, and one receive at a time may write a target
 * (stream/receive/lock.ts).
 */
import { constants as fsConstants } from 'node:fs';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { isAbsolute, resolve } from 'node:path';
import { AbortError, DmthinError, isSystemError, StreamError, SystemCallError, throwIfAborted, check, UsageError } from '../errors';
import { applyStream, type ApplyChunks } from '../stream/receive/apply';
import { BlockWriter } from '../native/block-writer';
import { openError } from '../native/open-error';
import { fileChunks } from '../stream/receive/file-chunks';
import { openPipe, pipeChunks } from '../stream/receive/pipe-chunks';
import { needDirectory, refuseForeignStateFile, refuseOutputOverInputs, sameTarget, stateNotRecorded, completionNotRecorded, targetIdentity, fileStamp, sameStamp } from '../output/file';
import { describeIdentity, identityKey, type StreamHeader } from '../stream/format/records';
import { ReceiveLock } from '../stream/receive/lock';
import { checkBase, defaultStateFile, entryFor, readState, type ReceiveState, writeState } from '../stream/receive/state';
import { Spool } from '../stream/receive/spool';
import { growRecordedTarget, inspectTarget, resolveZeroMethod, type TargetInfo, tooSmallAdvice, whyCannotGrow, ZERO_METHODS, type ZeroMethod, zeroer } from '../stream/receive/target';
import { RecordBuffers, StreamVerifier, type VerifiedStream } from '../stream/format/verifier';
import { newStreamMacKey } from '../stream/format/stream-mac';

/** Options of receive: the target, its state file, and what to accept. */
export interface ReceiveOptions {
  /** Block device or regular file to write. */
  target: string;
  /** Where the target's receive state is kept (default: next to a file target, else under `stateDir`). */
  stateFile?: string;
  /** Directory for block-device state files (default /var/lib/dmthin/receive). */
  stateDir?: string;
  /** Apply an incremental stream even if the target is not recorded as holding its base. */
  force?: boolean;
  /**
   * The volume was resized since the base was received: accept an
   * incremental stream whose device size differs from the one recorded for
   * its base. When it grew, the new tail [old size, new size) is made to
   * read as zeros before the stream is applied; when it shrank, the target
   * keeps its bytes beyond the new size.
   */
  resized?: boolean;
  /**
   * Create a regular-file target that does not exist, or grow one smaller
   * than the stream's device (never shrinks, never truncates).
   */
  create?: boolean;
  /** Where a non-seekable input is spooled (default TMPDIR). */
  spoolDir?: string;
  /** How discard records are applied (default 'auto': see ZeroMethod). */
  zero?: ZeroMethod;
  /** O_DIRECT for the target writes (default 'auto'). */
  direct?: 'auto' | 'always' | 'never';
  /** Cancels the work, which then rejects with AbortError. */
  signal?: AbortSignal;
  /** Called as the work advances. */
  onProgress?: (p: ReceiveProgress) => void;
}

/** Progress of receive. */
export interface ReceiveProgress {
  /** Verifying the whole stream first, or writing it to the target. */
  phase: 'verify' | 'apply';
  /** Stream bytes done in this phase. */
  bytes: number;
  /** Known for a seekable input and while applying. */
  totalBytes?: number;
}

/** What a receive applied. */
export interface ReceiveResult {
  /** The stream's header (snapshot, base, device size...). */
  header: StreamHeader;
  /** The stream's digest (hex; docs/stream-format.md §6) of the bytes before its end record. */
  digest: string;
  /** Stream length. */
  bytes: number;
  /** Data blocks written. */
  dataBlocks: number;
  /** Blocks discarded (made to read as zeros). */
  discardBlocks: number;
  /** Data bytes written. */
  dataBytes: number;
  /** The state file that now records the snapshot. */
  stateFile: string;
  /** The input was spooled to a temp file (not seekable). */
  spooled: boolean;
  /** The target file was created by this receive. */
  created: boolean;
  /** How discard records were applied: method -> calls. */
  zeroing: Record<string, number>;
  /** With `resized`: the size the base was received at, when it differs. */
  resizedFrom?: number;
}

/** One receive's view of its target: checks before, apply after verification. */
class Receiver {
  private writer?: BlockWriter;

  private constructor(
    private readonly o: ReceiveOptions,
    private readonly info: TargetInfo,
    readonly stateFile: string,
    private readonly lock: ReceiveLock,
  ) {}

  /** Inspects and locks the target (a second receive onto it is refused here, before any input is read). */
  static async prepare(o: ReceiveOptions): Promise<Receiver> {
    const info = await inspectTarget(o.target);
    const stateFile = o.stateFile ?? defaultStateFile(o.target, info.blockDevice, o.stateDir);
    // The state is written over the file it names: never the target or the stream being read (receive() passes `input` along).
    const input = (o as { input?: unknown }).input;
    const inputPath = input === '-' ? '/proc/self/fd/0' : typeof input === 'string' ? input : undefined;
    // Nor is the target the stream: the apply pass would write over the bytes it reads.
    await refuseOutputOverInputs(o.target, 'the target', [{ path: inputPath, role: 'the input stream' }]);
    await refuseOutputOverInputs(stateFile, 'the receive state file', [
      { path: o.target, role: 'the target' },
      { path: inputPath, role: 'the input stream' },
    ]);
    // Directories named by the caller are not made up: a mistyped path would grow a tree (only the default state directory is made).
    if (!info.exists && o.create) await needDirectory(o.target, 'the target', 'receive');
    if (o.stateFile !== undefined) await needDirectory(o.stateFile, 'the state file', 'receive');
    if (o.stateFile !== undefined) await refuseForeignStateFile(o.stateFile, 'dmthin-receive-state', 'the receive state file');
    // A missing target that may not be created is refused on the header: nothing to lock (and no lock file to leave).
    const lock = !info.exists && !o.create ? ReceiveLock.none(o.target) : ReceiveLock.acquire(o.target, stateFile, info.exists && !info.blockDevice);
    const r = new Receiver(o, info, stateFile, lock);
    try {
      // A block device is claimed (O_EXCL) for the whole receive: that is its lock.
      if (info.blockDevice) r.writer = await BlockWriter.open(o.target, { direct: o.direct });
    } catch (e) {
      await r.close();
      throw e;
    }
    return r;
  }

  /**
   * Everything that can be refused without the stream's digest: early (on
   * the header) and again with the digest right before applying.
   */
  preflight(h: StreamHeader, digest: string | null): Promise<void> {
    const p = this.checkTarget(h, digest);
    // close() waits for it: a refusal found while the early check is still
    // opening the target must not leave the target open behind it.
    this.pending = p.catch(() => undefined);
    return p;
  }

  private pending?: Promise<unknown>;

  private async checkTarget(h: StreamHeader, digest: string | null): Promise<void> {
    const read = await readState(this.stateFile);
    // A state given (stateFile) for another target says nothing of what this
    // one holds. (A relative path, recorded before paths were made absolute,
    // is trusted.) A full stream replaces the state: nothing to check.
    const about = read.ok ? read.state?.target : undefined;
    if (h.base && this.o.force !== true && about !== undefined && isAbsolute(about) && !(await sameTarget(about, this.o.target))) {
      throw new StreamError(
        'base-mismatch',
        `the receive state ${this.stateFile} is about target ${about}, not ${this.o.target}, so it does not say what this target holds: give this target's own state file, or receive a full stream (option force applies it anyway)`,
        { path: this.stateFile },
      );
    }
    // A target that is not there (removed or moved since the state was written) holds no base: --create would make an empty file.
    if (h.base && this.o.force !== true && !this.info.exists) {
      throw new StreamError(
        'base-mismatch',
        `target ${this.o.target} does not exist, so it does not hold the stream's base (snapshot ${h.base.devId}): receive a full stream into it`,
        { path: this.o.target },
      );
    }
    // A state of a dmthin before stop 40 names its target by path alone: it cannot show that this is still the file or device it was written for.
    const recorded = read.ok ? read.state?.targetId : undefined;
    if (h.base && this.o.force !== true && read.ok && read.state && recorded === undefined) {
      throw new StreamError(
        'base-mismatch',
        `the receive state ${this.stateFile} was written by an older dmthin that did not record which file or device it describes, so it cannot show that ${this.o.target} holds the stream's base: ` +
          `receive a full stream once (option force applies this one anyway, if you know the target holds snapshot ${h.base.devId})`,
        { path: this.stateFile },
      );
    }
    // The same path, another device or file than the state was written for (an LV made again, a link repointed).
    if (h.base && this.o.force !== true && recorded !== undefined && this.info.exists) {
      const now = targetIdentity(this.o.target);
      if (now !== recorded) {
        throw new StreamError(
          'base-mismatch',
          `target ${this.o.target} is not the device or file the receive state ${this.stateFile} was written for (then ${recorded}, now ${now ?? 'nothing'}): ` +
            `it was replaced since, so it does not hold the stream's base; receive a full stream (option force applies it anyway)`,
          { path: this.stateFile },
        );
      }
    }
    // A file written since the state was recorded (through another of its names too) holds something else;
    // so does one written since an interrupted receive recorded its stamp (the retry would write over another's content).
    const stamp = read.ok ? read.state?.file : undefined;
    if (h.base && this.o.force !== true && stamp !== undefined && read.ok && read.state && this.info.exists && !this.info.blockDevice) {
      if (!sameStamp(await fileStamp(this.o.target), stamp)) {
        const since = read.state.pending === null ? 'the receive recorded in' : 'the receive interrupted (recorded as pending) in';
        throw new StreamError(
          'base-mismatch',
          `target ${this.o.target} was written after ${since} ${this.stateFile} (its size or modification time changed: a write, or a receive or restore through another of its names), ` +
            `so it may not hold the stream's base; receive a full stream (option force applies it anyway)`,
          { path: this.stateFile },
        );
      }
    }
    // A completed receive onto a file always records the file's stamp (since targetId was recorded, stop 40):
    // without it nothing shows the file unwritten since, and the state is damaged (an outside test: the
    // field deleted, an incremental was applied onto a file written since, exit 0).
    if (
      h.base &&
      this.o.force !== true &&
      stamp === undefined &&
      read.ok &&
      read.state?.targetId !== undefined &&
      read.state.current !== null &&
      read.state.pending === null &&
      this.info.exists &&
      !this.info.blockDevice
    ) {
      throw new StreamError(
        'state-file',
        `incremental stream, but the target's receive state is damaged: ${this.stateFile} records a completed receive onto the file ${this.o.target} without the file's size and modification time, ` +
          `so it cannot show that the file was not written since. Receive a full stream to start over (it replaces the state file), or, if the target is known to hold ${describeIdentity(h.base)}, apply it anyway (option force)`,
        { path: this.stateFile },
      );
    }
    checkBase(read, h, digest, this.stateFile, this.o.force === true, this.o.resized === true);
    if (!this.info.exists) {
      if (!this.o.create) throw new DmthinError('ENOENT', `target ${this.o.target} does not exist (option create makes a file target)`, { path: this.o.target });
      return;
    }
    // Opening does not write; it does check access early (and EBUSY for a claimed device).
    this.writer ??= await BlockWriter.open(this.o.target, { direct: this.o.direct });
    if (this.writer.size < h.deviceSize && !(this.o.create && !this.info.blockDevice)) {
      throw new StreamError('target-size', `target ${this.o.target} is ${this.writer.size} bytes, the stream's device is ${h.deviceSize} bytes: ${tooSmallAdvice(this.info.blockDevice, h.deviceSize)}`, {
        path: this.o.target,
        targetSize: this.writer.size,
        deviceSize: h.deviceSize,
      });
    }
  }

  async apply(v: VerifiedStream, chunks: ApplyChunks, spooled: boolean, buffers?: RecordBuffers): Promise<ReceiveResult> {
    const { header } = v;
    await this.preflight(header, v.digest);
    throwIfAborted(this.o.signal);
    let created = false;
    if (!this.writer) {
      this.writer = await BlockWriter.open(this.o.target, { direct: this.o.direct, create: true });
      created = this.writer.info.created;
      if (!this.writer.info.blockDevice) this.lock.lockTarget();
      // A file made here is sized before anything is recorded: where the filesystem
      // cannot hold it (EFBIG, ENOSPC) it is removed again and nothing is left.
      if (created && this.writer.size < header.deviceSize) await this.sizeCreated(header.deviceSize);
    }
    const writer = this.writer;
    const before = await readState(this.stateFile);
    const prev = before.ok ? before.state : null;
    const entry = entryFor(header, v.digest);
    const state: ReceiveState = {
      format: 'dmthin-receive-state',
      version: 1,
      // Absolute: a later receive checks that the state is about its own target.
      target: resolve(this.o.target),
      targetId: targetIdentity(this.o.target) ?? undefined,
      current: header.base ? (prev?.current ?? null) : null,
      pending: entry,
    };
    // Resized (checked by checkBase): the size the target's copy of the base has.
    const cur = prev?.current;
    const baseSize = header.base && this.o.resized && cur && cur.snapshot.key === identityKey(header.base) && cur.deviceSize !== header.deviceSize ? cur.deviceSize : undefined;
    const zero = zeroer(writer, this.info, resolveZeroMethod(this.info, this.o.zero));
    let started = false;
    let recorded = false;
    // From the first write on the target is in between: record that first. Nothing before it changes anything.
    const begin = async (): Promise<void> => {
      if (started) return;
      started = true;
      await writeState(this.stateFile, state).catch(async (e: unknown) => {
        if (created) await this.removeCreated();
        throw stateNotRecorded(e, 'receive', this.stateFile, this.o.target, created);
      });
      recorded = true;
      // A file target (created, or allowed to grow with `create`) becomes as large as the device.
      if (!writer.info.blockDevice && writer.size < header.deviceSize) {
        const undo = before.ok
          ? async () => {
              if (before.state) await writeState(this.stateFile, before.state);
              else await unlink(this.stateFile);
              recorded = false; // the failure is not "partly written"
            }
          : null;
        await growRecordedTarget(writer, header.deviceSize, this.o.target, "the stream's", 'receive', undo);
      }
      // Grown: the base had no blocks there, so neither does the delta; the target's old bytes must go.
      if (baseSize !== undefined && baseSize < header.deviceSize) await zero(baseSize, header.deviceSize - baseSize);
    };
    try {
      await applyStream(chunks, v, writer, zero, {
        signal: this.o.signal,
        onProgress: (p) => this.o.onProgress?.({ phase: 'apply', bytes: p.bytes, totalBytes: p.totalBytes }),
        beforeWrite: begin,
        buffers,
      });
      await begin(); // a stream with nothing to write still sizes the target
      await writer.fsync();
    } catch (e) {
      if (recorded && !writer.info.blockDevice) await this.stampInterrupted(state);
      throw recorded ? this.partlyWritten(e) : e;
    } finally {
      zero.close();
    }
    // The file's stamp after its last write (block devices have none that writes move).
    const done: ReceiveState = { ...state, current: entry, pending: null };
    if (!writer.info.blockDevice) done.file = await fileStamp(this.o.target);
    await writeState(this.stateFile, done).catch((e: unknown) => {
      throw completionNotRecorded(e, 'receive', this.stateFile, this.o.target);
    });
    return {
      header,
      digest: v.digest,
      bytes: v.bytes,
      dataBlocks: v.end.dataBlocks,
      discardBlocks: v.end.discardBlocks,
      dataBytes: v.end.dataBytes,
      stateFile: this.stateFile,
      spooled,
      created,
      zeroing: { ...zero.used },
      ...(baseSize !== undefined ? { resizedFrom: baseSize } : {}),
    };
  }

  /**
   * A failed or interrupted receive of a file target records the file's
   * stamp beside its pending entry: its retry trusts the file to be as this
   * receive left it, and refuses it once something else has written it (a
   * restore, another receive through another name). Best effort: without
   * the stamp (a write failure here, a SIGKILL) the retry trusts it, as
   * documented.
   */
  private async stampInterrupted(state: ReceiveState): Promise<void> {
    try {
      await writeState(this.stateFile, { ...state, file: await fileStamp(this.o.target) });
    } catch {
      // the pending entry alone stays recorded
    }
  }

  /** Closes and removes the file this receive created (nothing was recorded or written yet). */
  private async removeCreated(): Promise<void> {
    this.writer?.close();
    this.writer = undefined;
    await unlink(this.o.target).catch(() => undefined);
  }

  /** Grows the file this receive created to `size`; on failure removes it (nothing was recorded yet). */
  private async sizeCreated(size: number): Promise<void> {
    try {
      await this.writer!.extend(size);
    } catch (e) {
      await this.removeCreated();
      const x = e as NodeJS.ErrnoException;
      if (!isSystemError(e)) throw e;
      const why = whyCannotGrow(x);
      throw new SystemCallError(x.code ?? 'EIO', `cannot make the target ${this.o.target} ${size} bytes, the stream's device size: ${why}; nothing was written and the file this receive created was removed`, {
        syscall: x.syscall,
        path: this.o.target,
        cause: e,
      });
    }
  }

  /** A system error once the target started to change: say what state it is left in and what to do. */
  private partlyWritten(e: unknown): unknown {
    const x = e as NodeJS.ErrnoException;
    // Interrupted mid-write: said so, with what to do (the CLI prints "interrupted" and this).
    if (e instanceof AbortError) {
      return new AbortError(`${e.message}; target ${this.o.target} is partly written, and ${this.stateFile} records this receive as pending: run the same receive again, or receive a full stream`, {
        path: this.o.target,
        cause: e,
      });
    }
    if (!isSystemError(e)) return e;
    const fix = x.code === 'ENOSPC' || x.code === 'EDQUOT' ? 'make room' : 'fix the cause';
    return new SystemCallError(x.code ?? 'EIO', `writing the target ${this.o.target} failed (${x.message}); it is partly written, and ${this.stateFile} records this receive as pending: ${fix}, then run the same receive again`, {
      syscall: x.syscall,
      path: this.o.target,
      cause: e,
    });
  }

  async close(): Promise<void> {
    await this.pending;
    this.writer?.close();
    this.writer = undefined;
    this.lock.release();
  }
}

/** Verifies a chunk stream, running the early checks as soon as the header is in. */
class CheckedVerifier {
  readonly v: StreamVerifier;
  /** Reused by the apply pass that follows (one pass at a time). */
  readonly buffers = new RecordBuffers();
  private early?: Promise<void>;
  private awaited = false;

  /** `holdChunks`: the caller keeps each chunk until the digest has passed it (fileChunks' beforeReuse). */
  constructor(r: Receiver, holdChunks = false) {
    // Records are only checked here, never kept: the verifier's buffer can be reused.
    // The GMAC lets the apply pass check the bytes it reads again at a fraction of a second SHA-256's
    // cost (versions 1 and 2; the verifier drops it for versions 3 and 4, whose digest is cheaper to redo).
    // Data records are checked in pieces, never assembled (their bytes are not needed here).
    this.v = new StreamVerifier({ onHeader: (h) => (this.early = r.preflight(h, null)), reuseBuffers: this.buffers, holdChunks, mac: newStreamMacKey(), dataPieces: 'skip' });
  }

  async push(chunk: Buffer): Promise<void> {
    await this.v.ready(chunk.length); // the digest (its own thread) keeps up before the JS thread feeds it more
    // Taken one at a time and dropped: one record buffer is enough.
    for (const r of this.v.records(chunk)) void r;
    if (this.early && !this.awaited) {
      this.awaited = true;
      await this.early;
    }
  }

  async finish(): Promise<VerifiedStream> {
    const r = this.v.finish();
    if (this.early && !this.awaited) {
      this.awaited = true;
      await this.early;
    }
    return r;
  }
}

/** The Writable receiveStream returns, with its outcome as `result`. */
export type ReceiveWritable = Writable & {
  /** Settles when the stream has been applied (or refused). */
  readonly result: Promise<ReceiveResult>;
};

/** Chunks shorter than this are gathered into one buffer of GATHER_BYTES before they are verified and spooled. */
const GATHER_BELOW = 64 << 10;
const GATHER_BYTES = 1 << 20;

/**
 * A stream that arrives in pieces (a pipe, a Readable): spooled and verified
 * as it comes, applied when it ends. receiveStream's Writable and stdin use it.
 */
class SpooledReceive {
  private receiver?: Receiver;
  private spool?: Spool;
  private checker?: CheckedVerifier;

  /** Small chunks copied together (see push). */
  private gather?: Buffer;

  private gathered = 0;

  constructor(private readonly o: ReceiveOptions) {}

  /**
   * Inspects and locks the target before any input is read: a piped stream
   * that has not begun to arrive holds the target as one being read does
   * (a second receive onto it is refused). It took the lock on its first
   * bytes, so a receive started meanwhile wrote the target under it.
   */
  async start(): Promise<void> {
    await this.init();
  }

  private async init(): Promise<CheckedVerifier> {
    this.receiver ??= await Receiver.prepare(this.o);
    this.spool ??= await Spool.create(this.o.spoolDir);
    this.checker ??= new CheckedVerifier(this.receiver);
    return this.checker;
  }

  /**
   * Verifies and spools `chunk`; the caller may reuse it once this has
   * resolved. Small chunks are copied together first: each spool write is a
   * thread-pool round trip (~0.1 ms), so a Readable of 1-byte chunks took
   * 86 s for a 787 KB stream.
   */
  async push(chunk: Buffer): Promise<void> {
    throwIfAborted(this.o.signal);
    await this.init();
    if (chunk.length < GATHER_BELOW) {
      this.gather ??= Buffer.allocUnsafeSlow(GATHER_BYTES);
      if (this.gathered + chunk.length > this.gather.length) await this.flush();
      chunk.copy(this.gather, this.gathered);
      this.gathered += chunk.length;
      return;
    }
    await this.flush();
    await this.take(chunk);
  }

  /** Verifies and spools what was gathered. */
  private async flush(): Promise<void> {
    if (!this.gathered) return;
    const n = this.gathered;
    this.gathered = 0; // a failure below fails the receive: nothing is pushed again
    await this.take(this.gather!.subarray(0, n));
  }

  private async take(chunk: Buffer): Promise<void> {
    const c = this.checker!;
    await c.push(chunk);
    await this.spool!.write(chunk);
    this.o.onProgress?.({ phase: 'verify', bytes: c.v.position });
  }

  /** The input ended: applies what was spooled; the spool and the target are let go before it resolves. */
  async finish(): Promise<ReceiveResult> {
    const c = await this.init();
    await this.flush();
    const verified = await c.finish();
    await this.spool!.finish();
    const sp = this.spool!;
    // The spool is read back in chunks held until hashed (no copy for the digest).
    const r = await this.receiver!.apply(verified, (beforeReuse) => sp.chunks(this.o.signal, beforeReuse), true, c.buffers);
    // Released before the caller hears of it: a receive that follows at once finds the target free.
    await this.close();
    return r;
  }

  /** Removes the spool and lets go of the target (idempotent). */
  async close(): Promise<void> {
    await this.spool?.remove();
    await this.receiver?.close();
  }
}

/**
 * A Writable to pipe a stream into: it is spooled and verified as it
 * arrives, and applied to `target` when it ends. The Writable finishes only
 * once the target has been written, fsynced and its state recorded.
 *
 * A refused stream rejects `.result` and errors the Writable, as any Node
 * Writable does: connect it with `stream.pipeline()` (or give it an 'error'
 * listener); `.pipe()` alone leaves that 'error' unhandled, which ends the
 * process.
 */
export function receiveStream(target: string, opts: Omit<ReceiveOptions, 'target'> = {}): ReceiveWritable {
  check.options(opts, 'receive options');
  const o: ReceiveOptions = { ...opts, target };
  checkReceiveOptions(o);
  const job = new SpooledReceive(o);
  let settle!: { resolve: (r: ReceiveResult) => void; reject: (e: unknown) => void };
  const result = new Promise<ReceiveResult>((resolve, reject) => (settle = { resolve, reject }));
  result.catch(() => undefined); // callers may only listen to the Writable

  // The write or final step in progress: destroy() (an abort) waits for it before closing the spool and the target under it.
  let busy: Promise<unknown> = Promise.resolve();
  let current: Promise<unknown> = Promise.resolve();
  const track = <T>(p: Promise<T>): Promise<T> => {
    current = p;
    busy = p.catch(() => undefined);
    return p;
  };

  // The target is locked at once, not on the first chunk (see SpooledReceive.start).
  // A refusal is reported by the first write or the end, through the callbacks
  // a pipeline listens to: failing the Writable's construction emitted 'error'
  // before a caller that awaited something first had attached a handler (a review).
  const started = track(job.start());
  started.catch(() => undefined);
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      track(started.then(() => job.push(chunk))).then(() => cb(), cb);
    },
    final(cb) {
      track(started.then(() => job.finish())).then(
        (r) => {
          settle.resolve(r);
          cb();
        },
        (e) => cb(e),
      );
    },
    destroy(err, cb) {
      (async () => {
        await busy;
        await job.close();
      })().finally(() => {
        if (err) settle.reject(err);
        else settle.reject(new AbortError('receive stream closed before the end of the input'));
        cb(err);
      });
    },
  });
  if (o.signal) {
    const onAbort = (): void => {
      const fresh = new AbortError(undefined, { cause: o.signal!.reason });
      // The step in progress ends on the abort too; an apply's AbortError says more (the target partly written, what to do): it is the one kept.
      current.then(
        () => w.destroy(fresh),
        (e: unknown) => w.destroy(e instanceof AbortError ? e : fresh),
      );
    };
    if (o.signal.aborted) onAbort();
    else o.signal.addEventListener('abort', onAbort, { once: true });
    w.once('close', () => o.signal!.removeEventListener('abort', onAbort));
  }
  return Object.assign(w, { result });
}

/** A caller's mistake in the options: UsageError naming it, before anything is opened. */
function checkReceiveOptions(o: ReceiveOptions): void {
  check.string(o.target, 'target');
  check.signal(o.signal);
  check.callback(o.onProgress, 'onProgress');
  check.oneOf(o.zero, 'zero', ZERO_METHODS);
  check.oneOf(o.direct, 'direct', ['auto', 'always', 'never']);
  for (const k of ['stateFile', 'stateDir', 'spoolDir'] as const) if (o[k] !== undefined) check.string(o[k], k);
  // 'yes' was taken as false, silently (outside hunt S).
  for (const k of ['force', 'resized', 'create'] as const) check.boolean(o[k], k);
}

/**
 * Receives a stream into `target`: `input` is a file path (a regular file is
 * verified in place, then applied from the same open descriptor), '-' for
 * stdin, or a Readable.
 */
export async function receive(opts: ReceiveOptions & { input: string | Readable }): Promise<ReceiveResult> {
  check.required(opts, 'receive');
  checkReceiveOptions(opts);
  const input: unknown = opts.input;
  if (typeof input === 'string' ? input === '' : !(typeof input === 'object' && input !== null && typeof (input as Readable).on === 'function')) {
    throw new UsageError(`input must be a path, '-' (stdin) or a Readable, got ${input === null ? 'null' : typeof input === 'string' ? '""' : typeof input}`);
  }
  if (typeof input === 'string' && input !== '-') {
    let fh: FileHandle;
    try {
      fh = await openInput(input, opts.signal);
    } catch (e) {
      if (e instanceof DmthinError) throw e;
      // "cannot open X for reading: no such file or directory [ENOENT]", a SystemCallError as send's.
      throw openError(e, input, 'reading');
    }
    try {
      const st = await fh.stat();
      if (st.isFile()) return await receiveFile(fh, st.size, opts);
      if (st.isDirectory()) throw new SystemCallError('EISDIR', `cannot read ${input}: it is a directory, not a stream; give the stream's file`, { path: input, syscall: 'read' });
      // A FIFO (its writer is there: the open waited for one): read in large chunks of reused buffers.
      const pipe = openPipe(fh.fd);
      if (pipe !== null) return await receivePipe(pipe, opts);
      // A character device: spooled like a pipe, read through this descriptor.
      const w = receiveStream(opts.target, opts);
      await pipeline(fh.createReadStream({ autoClose: false }), w);
      return await w.result;
    } finally {
      await fh.close();
    }
  }
  const readable = input === '-' ? process.stdin : (input as Readable);
  const w = receiveStream(opts.target, opts);
  await pipeline(readable, w); // the Writable itself listens to the signal (with dmthin's AbortError)
  return w.result;
}

/**
 * Opens the stream file `path` for reading, settling at once on an abort: a
 * FIFO's open waits for a writer, in a thread-pool thread that an abort
 * cannot stop. A FIFO is first opened non-blocking (that returns at once), a
 * descriptor of the FIFO itself; after an abort the FIFO is opened for
 * writing through it (/proc/self/fd, which works also when the path was
 * removed or replaced meanwhile) and closed, so the waiting open returns (its
 * descriptor is then closed too).
 */
async function openInput(path: string, signal?: AbortSignal): Promise<FileHandle> {
  throwIfAborted(signal);
  if (!signal) return open(path, 'r');
  const fifo = await open(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK).then(
    async (h) => ((await h.stat()).isFIFO() ? h : (await h.close(), undefined)),
    () => undefined, // the open below reports why
  );
  // Without /proc, by its path (an abort then settles the promise, but the waiting open stays until a writer comes).
  const opening = fifo ? open(`/proc/self/fd/${fifo.fd}`, 'r').catch(() => open(path, 'r')) : open(path, 'r');
  let onAbort = (): void => undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(new AbortError());
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([opening, aborted]);
  } catch (e) {
    if (signal.aborted) {
      opening.then((fh) => fh.close(), () => undefined);
      if (fifo) {
        await open(`/proc/self/fd/${fifo.fd}`, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK)
          .then((w) => w.close())
          .catch(() => undefined);
        await opening.catch(() => undefined);
      }
    }
    throw e;
  } finally {
    signal.removeEventListener('abort', onAbort);
    await fifo?.close();
  }
}

/**
 * Receives from the FIFO descriptor `fd` (taken over and closed), e.g. a new
 * descriptor of stdin's pipe from openPipe(0): read in 1 MiB chunks of two
 * reused buffers (pipe-chunks.ts), spooled while verified, then applied.
 * The CLI's way for a piped stdin; a library caller's receive({ input: '-' })
 * keeps reading process.stdin, which it may have read from already.
 * @internal
 */
export async function receivePipe(fd: number, opts: ReceiveOptions): Promise<ReceiveResult> {
  const job = new SpooledReceive(opts);
  try {
    await job.start();
    for await (const chunk of pipeChunks(fd, { signal: opts.signal })) await job.push(chunk);
    return await job.finish();
  } finally {
    await job.close();
  }
}

/** A seekable input: verify it where it is, then apply it from the same descriptor. */
async function receiveFile(fh: FileHandle, size: number, opts: ReceiveOptions): Promise<ReceiveResult> {
  const r = await Receiver.prepare(opts);
  try {
    // Chunks are held until the digest (its own thread) has read them in place.
    const c = new CheckedVerifier(r, true);
    for await (const chunk of fileChunks(fh, { signal: opts.signal, beforeReuse: (end) => c.v.hashedThrough(end) })) {
      await c.push(chunk);
      opts.onProgress?.({ phase: 'verify', bytes: c.v.position, totalBytes: size });
    }
    const verified = await c.finish();
    // The bytes verified, not what the file holds now (it may have grown since).
    return await r.apply(verified, (beforeReuse) => fileChunks(fh, { signal: opts.signal, beforeReuse, limit: verified.bytes }), false, c.buffers);
  } finally {
    await r.close();
  }
}
