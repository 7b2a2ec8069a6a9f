/**
 * Shared pieces of the send/receive tests: a synthetic pool data device
 * (every data block filled with a pattern derived from its number), the
 * content a thin device must then have, and small file utilities.
 */
import { createHash } from 'node:crypto';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as outputFile from '../../src/output/file';
import { outputError } from '../../src/output/sink';
import type { DataSource } from '../../src/stream/send/data-source';
import { ThinMetadata } from '../../src/thin/metadata';

/** Writes the pattern of data block `d`, bytes [from, from+n) of it (multiples of 8), into `out` at `at`. */
function fillPattern(out: Buffer, at: number, d: number, from: number, n: number): void {
  for (let i = 0; i < n; i += 8) {
    out.writeUInt32LE(d >>> 0, at + i);
    out.writeUInt32LE(((from + i) / 8) ^ 0x5a5a0000, at + i + 4);
  }
}

/** Data block `d`'s bytes: 8-byte words (d, word index), so every block and every offset differ. */
export function patternBlock(d: number, blockBytes: number): Buffer {
  const b = Buffer.allocUnsafe(blockBytes);
  fillPattern(b, 0, d, 0, blockBytes);
  return b;
}

/** Whether `buf` holds data block `d`'s pattern (patternBlock's), without building it. */
export function isPattern(buf: Buffer, d: number): boolean {
  const w = new Uint32Array(buf.buffer, buf.byteOffset, buf.length / 4); // little-endian hosts, as writeUInt32LE
  for (let i = 0; i < w.length; i += 2) if (w[i] !== d >>> 0 || w[i + 1] !== ((i / 2) ^ 0x5a5a0000) >>> 0) return false;
  return true;
}

/** The same pattern, read through the DataSource interface (data-block addressing), no file needed. */
export class PatternSource implements DataSource {
  readonly addressing = 'data' as const;
  reads = 0;
  constructor(readonly blockBytes: number) {}
  async readBlocks(unit: number, blocks: readonly number[]): Promise<Buffer> {
    this.reads++;
    const out = Buffer.allocUnsafe(unit * blocks.length);
    blocks.forEach((u, i) => {
      const start = u * unit;
      for (let off = 0; off < unit; ) {
        const d = Math.floor((start + off) / this.blockBytes);
        const inBlock = (start + off) % this.blockBytes;
        const n = Math.min(unit - off, this.blockBytes - inBlock);
        fillPattern(out, i * unit + off, d, inBlock, n);
        off += n;
      }
    });
    return out;
  }
}

export interface Scratch {
  dir: string;
  path(name: string): string;
  cleanup(): void;
}

export function scratch(): Scratch {
  const dir = mkdtempSync(join(tmpdir(), 'dmthin-stream-test-'));
  return { dir, path: (n) => join(dir, n), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Data blocks any device maps (live trees, and the held snapshot's when there is one). */
export async function usedDataBlocks(image: Buffer): Promise<Set<number>> {
  const used = new Set<number>();
  for (const snap of [false, true]) {
    let md: ThinMetadata;
    try {
      md = await ThinMetadata.fromBuffer(image, { metadataSnap: snap || undefined });
    } catch {
      continue; // no held snapshot
    }
    for (const id of (await md.devices()).keys()) {
      for await (const r of md.mappings(id)) for (let i = 0; i < r.length; i++) used.add(r.dataBegin + i);
    }
    await md.close();
  }
  return used;
}

/** A sparse pool data device image: only the used data blocks are written. */
export async function writeDataFile(image: Buffer, path: string, blockBytes: number): Promise<void> {
  const md = await ThinMetadata.fromBuffer(image);
  const nr = md.nrDataBlocks;
  await md.close();
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, nr * blockBytes);
    for (const d of await usedDataBlocks(image)) writeSync(fd, patternBlock(d, blockBytes), 0, blockBytes, d * blockBytes);
  } finally {
    closeSync(fd);
  }
}

/** SHA-256 of what thin device `devId` reads as, over `deviceSize` bytes. */
export async function expectedSha(md: ThinMetadata, devId: number, deviceSize: number): Promise<string> {
  const bs = md.superblock.dataBlockSize * 512;
  const h = createHash('sha256');
  const zero = Buffer.alloc(bs);
  let pos = 0;
  const fill = (to: number): void => {
    while (pos < to) {
      const n = Math.min(to - pos, bs - (pos % bs));
      h.update(zero.subarray(0, n));
      pos += n;
    }
  };
  for await (const r of md.mappings(devId)) {
    if (r.originBegin > BigInt(Number.MAX_SAFE_INTEGER)) break; // past any device size
    for (let i = 0; i < r.length; i++) {
      const start = (Number(r.originBegin) + i) * bs;
      if (start >= deviceSize) break;
      fill(start);
      const n = Math.min(bs, deviceSize - start);
      const piece = Buffer.allocUnsafe(n);
      fillPattern(piece, 0, r.dataBegin + i, 0, n);
      h.update(piece);
      pos += n;
    }
  }
  fill(deviceSize);
  return h.digest('hex');
}

export function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Seeded pseudo-random bytes (xorshift32): what a target holds before a receive. */
export function junkBytes(size: number, seed = 1): Buffer {
  const b = Buffer.allocUnsafe(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeUInt32LE(x >>> 0, i);
  }
  return b;
}

/** A file of `size` bytes of pseudo-random junk (a target that held something else). */
export function junkFile(path: string, size: number, seed = 1): void {
  const fd = openSync(path, 'w');
  writeSync(fd, junkBytes(size, seed));
  closeSync(fd);
}

/**
 * Runs `run` with the state-file writer failing as on a full filesystem (the
 * output sink's ENOSPC, naming `path`): on every call, or only on call number
 * `nth` (the others write). Resolves with what `run` rejected with.
 */
export async function withStateWritesFull(path: string, run: () => Promise<unknown>, nth?: number): Promise<unknown> {
  const full = outputError(Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', syscall: 'write' }), path);
  const real = outputFile.writeFileAtomically;
  let calls = 0;
  const write = jest.spyOn(outputFile, 'writeFileAtomically').mockImplementation((p, text) => (nth === undefined || ++calls === nth ? Promise.reject(full) : real(p, text)));
  try {
    return await run().then(
      () => undefined,
      (e: unknown) => e,
    );
  } finally {
    write.mockRestore();
  }
}
