/**
 * Spool: a temp file holding a non-seekable input (a pipe, stdin) so the
 * whole stream can be verified before the target is touched and then read
 * again to apply it, through the same open descriptor. Unlinked as soon as
 * it is open (its folder too): nothing is left behind on any exit, SIGKILL
 * included; the space goes back when the descriptor is closed.
 */
import { mkdtempSync, rmdirSync, rmSync, unlinkSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { DmthinError } from '../../errors';
import { fileChunks } from './file-chunks';

export class Spool {
  private bytes = 0;

  private writing = true;

  private constructor(
    private fh: FileHandle | null,
    /** Where it was made (unlinked since): for messages. */
    readonly path: string,
  ) {}

  /** A new spool file in `dir` (default: TMPDIR). */
  static async create(dir?: string): Promise<Spool> {
    let d: string;
    try {
      d = mkdtempSync(join(dir ?? tmpdir(), 'dmthin-spool-'));
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new DmthinError(err.code ?? 'EIO', `cannot create a spool directory in ${dir ?? tmpdir()}: ${err.message}`, { path: dir ?? tmpdir(), cause: e });
    }
    const path = join(d, 'stream');
    let fh: FileHandle | undefined;
    try {
      fh = await open(path, 'wx+', 0o600);
      unlinkSync(path);
      rmdirSync(d);
      return new Spool(fh, path);
    } catch (e) {
      await fh?.close().catch(() => undefined);
      rmSync(d, { recursive: true, force: true });
      throw e;
    }
  }

  get size(): number {
    return this.bytes;
  }

  async write(chunk: Buffer): Promise<void> {
    if (!this.fh || !this.writing) throw new DmthinError('EBADF', 'spool is closed for writing', { path: this.path });
    let done = 0;
    try {
      while (done < chunk.length) {
        const { bytesWritten } = await this.fh.write(chunk, done, chunk.length - done, this.bytes + done);
        done += bytesWritten;
      }
    } catch (e) {
      // The spool's folder, named: the user chose it (spool dir) or TMPDIR did, and the fix is there.
      const err = e as NodeJS.ErrnoException;
      const dir = dirname(dirname(this.path));
      const room = err.code === 'ENOSPC' || err.code === 'EDQUOT' ? ': the stream is spooled whole before it is applied; make room there or point spool dir (or TMPDIR) at a filesystem with room' : '';
      throw new DmthinError(err.code ?? 'EIO', `cannot write the stream's spool file in ${dir} (${err.message})${room}; the target was not touched`, { path: dir, syscall: err.syscall, cause: e });
    }
    this.bytes += chunk.length;
  }

  /** Done writing (the file stays until remove()). */
  async finish(): Promise<void> {
    this.writing = false;
  }

  /** What was written, read back through the descriptor it was written with. */
  chunks(signal?: AbortSignal, beforeReuse?: (end: number) => Promise<void>): AsyncGenerator<Buffer> {
    if (!this.fh) throw new DmthinError('EBADF', 'spool is closed', { path: this.path });
    return fileChunks(this.fh, { signal, beforeReuse });
  }

  /** Closes it (the file is gone already). */
  async remove(): Promise<void> {
    const f = this.fh;
    this.fh = null;
    await f?.close().catch(() => undefined);
  }
}
