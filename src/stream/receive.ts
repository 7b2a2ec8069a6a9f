/**
 * The receiving side. Nothing is written to the target until the whole
 * stream has been verified: every record's CRC, the end record's counts and
 * the stream's SHA-256, the target's size and (for an incremental stream)
 * that the target holds the stream's base. A seekable input file is verified
 * in place; anything else is spooled to a temp file while it is verified.
 * Then the stream is read again and applied (data written O_DIRECT, discards
 * as discards or zeros), the target is fsynced and the new state recorded.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { AbortError, DmthinError, StreamError, throwIfAborted } from '../errors';
import { applyStream } from './apply';
import { BlockWriter } from './block-writer';
import { fileChunks } from './file-chunks';
import { refuseOutputOverInputs } from './output-file';
import type { StreamHeader } from './format';
import { checkBase, defaultStateFile, entryFor, readState, type ReceiveState, writeState } from './receive-state';
import { Spool } from './spool';
import { inspectTarget, resolveZeroMethod, type TargetInfo, type ZeroMethod, zeroer } from './target';
import { StreamVerifier, type VerifiedStream } from './verifier';

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
   * Create a regular-file target that does not exist, or grow one smaller
   * than the stream's device (never shrinks, never truncates).
   */
  create?: boolean;
  /** Where a non-seekable input is spooled (default TMPDIR). */
  spoolDir?: string;
  /** How discard records are applied (default 'auto', see target.ts). */
  zero?: ZeroMethod;
  /** O_DIRECT for the target writes (default 'auto'). */
  direct?: 'auto' | 'always' | 'never';
  signal?: AbortSignal;
  onProgress?: (p: ReceiveProgress) => void;
}

export interface ReceiveProgress {
  phase: 'verify' | 'apply';
  bytes: number;
  /** Known for a seekable input and while applying. */
  totalBytes?: number;
}

export interface ReceiveResult {
  header: StreamHeader;
  /** SHA-256 (hex) of the stream before its end record. */
  digest: string;
  /** Stream length. */
  bytes: number;
  dataBlocks: number;
  discardBlocks: number;
  dataBytes: number;
  stateFile: string;
  /** The input was spooled to a temp file (not seekable). */
  spooled: boolean;
  /** The target file was created by this receive. */
  created: boolean;
  /** How discard records were applied: method -> calls. */
  zeroing: Record<string, number>;
}

/** One receive's view of its target: checks before, apply after verification. */
class Receiver {
  private writer?: BlockWriter;

  private constructor(
    private readonly o: ReceiveOptions,
    private readonly info: TargetInfo,
    readonly stateFile: string,
  ) {}

  static async prepare(o: ReceiveOptions): Promise<Receiver> {
    const info = await inspectTarget(o.target);
    const stateFile = o.stateFile ?? defaultStateFile(o.target, info.blockDevice, o.stateDir);
    // The state is written over the file it names: never the target or the stream being read (receive() passes `input` along).
    const input = (o as { input?: unknown }).input;
    await refuseOutputOverInputs(stateFile, 'the receive state file', [
      { path: o.target, role: 'the target' },
      { path: input === '-' ? '/proc/self/fd/0' : typeof input === 'string' ? input : undefined, role: 'the input stream' },
    ]);
    return new Receiver(o, info, stateFile);
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
    checkBase(await readState(this.stateFile), h, digest, this.stateFile, this.o.force === true);
    if (!this.info.exists) {
      if (!this.o.create) throw new DmthinError('ENOENT', `target ${this.o.target} does not exist (create a file target with --create)`, { path: this.o.target });
      return;
    }
    // Opening does not write; it does check access early (and EBUSY for a claimed device).
    this.writer ??= await BlockWriter.open(this.o.target, { direct: this.o.direct });
    if (this.writer.size < h.deviceSize && !(this.o.create && !this.info.blockDevice)) {
      throw new StreamError('target-size', `target ${this.o.target} is ${this.writer.size} bytes, the stream's device is ${h.deviceSize} bytes`, {
        path: this.o.target,
        targetSize: this.writer.size,
        deviceSize: h.deviceSize,
      });
    }
  }

  async apply(v: VerifiedStream, chunks: () => AsyncIterable<Buffer>, spooled: boolean): Promise<ReceiveResult> {
    const { header } = v;
    await this.preflight(header, v.digest);
    throwIfAborted(this.o.signal);
    let created = false;
    if (!this.writer) {
      this.writer = await BlockWriter.open(this.o.target, { direct: this.o.direct, create: true });
      created = this.writer.info.created;
    }
    // From here on the target changes: record that it is in between.
    const before = await readState(this.stateFile);
    const prev = before.ok ? before.state : null;
    const entry = entryFor(header, v.digest);
    const state: ReceiveState = {
      format: 'dmthin-receive-state',
      version: 1,
      target: this.o.target,
      current: header.base ? (prev?.current ?? null) : null,
      pending: entry,
    };
    await writeState(this.stateFile, state);
    // A file target (created, or allowed to grow with `create`) becomes as large as the device.
    if (!this.writer.info.blockDevice && this.writer.size < header.deviceSize) await this.writer.extend(header.deviceSize);
    const zero = zeroer(this.writer, this.info, resolveZeroMethod(this.info, this.o.zero));
    try {
      await applyStream(chunks(), v, this.writer, zero, {
        signal: this.o.signal,
        onProgress: (p) => this.o.onProgress?.({ phase: 'apply', bytes: p.bytes, totalBytes: p.totalBytes }),
      });
    } finally {
      zero.close();
    }
    await this.writer.fsync();
    await writeState(this.stateFile, { ...state, current: entry, pending: null });
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
    };
  }

  async close(): Promise<void> {
    await this.pending;
    this.writer?.close();
    this.writer = undefined;
  }
}

/** Verifies a chunk stream, running the early checks as soon as the header is in. */
class CheckedVerifier {
  readonly v: StreamVerifier;
  private early?: Promise<void>;
  private awaited = false;

  constructor(r: Receiver) {
    this.v = new StreamVerifier({ onHeader: (h) => (this.early = r.preflight(h, null)) });
  }

  async push(chunk: Buffer): Promise<void> {
    this.v.push(chunk);
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

export type ReceiveWritable = Writable & {
  /** Settles when the stream has been applied (or refused). */
  readonly result: Promise<ReceiveResult>;
};

/**
 * A Writable to pipe a stream into: it is spooled and verified as it
 * arrives, and applied to `target` when it ends. The Writable finishes only
 * once the target has been written, fsynced and its state recorded.
 */
export function receiveStream(target: string, opts: Omit<ReceiveOptions, 'target'> = {}): ReceiveWritable {
  const o: ReceiveOptions = { ...opts, target };
  let receiver: Receiver | undefined;
  let spool: Spool | undefined;
  let checker: CheckedVerifier | undefined;
  let settle!: { resolve: (r: ReceiveResult) => void; reject: (e: unknown) => void };
  const result = new Promise<ReceiveResult>((resolve, reject) => (settle = { resolve, reject }));
  result.catch(() => undefined); // callers may only listen to the Writable

  const init = async (): Promise<CheckedVerifier> => {
    receiver ??= await Receiver.prepare(o);
    spool ??= await Spool.create(o.spoolDir);
    checker ??= new CheckedVerifier(receiver);
    return checker;
  };

  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      (async () => {
        throwIfAborted(o.signal);
        const c = await init();
        await c.push(chunk);
        await spool!.write(chunk);
        o.onProgress?.({ phase: 'verify', bytes: c.v.position });
      })().then(() => cb(), cb);
    },
    final(cb) {
      (async () => {
        const c = await init();
        const verified = await c.finish();
        await spool!.finish();
        const path = spool!.path;
        return receiver!.apply(verified, () => fileChunks(path, { signal: o.signal }), true);
      })().then(
        (r) => {
          settle.resolve(r);
          cb();
        },
        (e) => cb(e),
      );
    },
    destroy(err, cb) {
      (async () => {
        await spool?.remove();
        await receiver?.close();
      })().finally(() => {
        if (err) settle.reject(err);
        else settle.reject(new AbortError('receive stream closed before the end of the input'));
        cb(err);
      });
    },
  });
  if (o.signal) {
    const onAbort = (): void => {
      w.destroy(new AbortError(undefined, { cause: o.signal!.reason }));
    };
    if (o.signal.aborted) onAbort();
    else o.signal.addEventListener('abort', onAbort, { once: true });
    w.once('close', () => o.signal!.removeEventListener('abort', onAbort));
  }
  return Object.assign(w, { result });
}

/**
 * Receives a stream into `target`: `input` is a file path (verified in place
 * when it is a regular file), '-' for stdin, or a Readable.
 */
export async function receive(opts: ReceiveOptions & { input: string | Readable }): Promise<ReceiveResult> {
  let input = opts.input;
  if (typeof input === 'string' && input !== '-') {
    let st;
    try {
      st = await stat(input);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new DmthinError(err.code ?? 'EIO', `${input}: ${err.message}`, { path: input, syscall: 'stat', cause: e });
    }
    if (st.isFile()) return receiveFile(input, st.size, opts);
    input = createReadStream(input);
  }
  const readable = input === '-' ? process.stdin : (input as Readable);
  const w = receiveStream(opts.target, opts);
  await pipeline(readable, w); // the Writable itself listens to the signal (with dmthin's AbortError)
  return w.result;
}

/** A seekable input: verify it where it is, then apply it from there. */
async function receiveFile(path: string, size: number, opts: ReceiveOptions): Promise<ReceiveResult> {
  const r = await Receiver.prepare(opts);
  try {
    const c = new CheckedVerifier(r);
    for await (const chunk of fileChunks(path, { signal: opts.signal })) {
      await c.push(chunk);
      opts.onProgress?.({ phase: 'verify', bytes: c.v.position, totalBytes: size });
    }
    const verified = await c.finish();
    return await r.apply(verified, () => fileChunks(path, { signal: opts.signal }), false);
  } finally {
    await r.close();
  }
}
