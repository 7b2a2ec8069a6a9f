/**
 * Per-block ownership over a huge block range, allocated in pages on first
 * touch: memory follows the blocks actually used, not the device size. Pages
 * are small (256 blocks, 512 bytes) so that mappings scattered far apart cost
 * at most half a KiB each (a 930 KB image with mappings 65536 blocks apart
 * took 1.2 GB with 64 Ki-block pages), while a dense range costs 2 bytes a block.
 * Each block records "unused", "used once, by owner k" or "used more than once",
 * which answers "how many of k's blocks nobody else uses" in one pass.
 */
const PAGE = 256;

export class OwnerMap {
  static readonly MAX_OWNERS = 0xfffffffe;
  private readonly pages: (Uint16Array | Uint32Array | undefined)[] = [];
  private readonly shared: number;
  private readonly wide: boolean;

  /** `owners`: how many distinct owners (e.g. devices) will be marked. */
  constructor(owners: number) {
    this.wide = owners >= 0xffff;
    this.shared = this.wide ? 0xffffffff : 0xffff;
  }

  /** Records one use of block b by owner k (0-based). */
  mark(b: number, k: number): void {
    const p = Math.floor(b / PAGE);
    let page = this.pages[p];
    if (!page) page = this.pages[p] = this.wide ? new Uint32Array(PAGE) : new Uint16Array(PAGE);
    const i = b - p * PAGE;
    const v = page[i];
    page[i] = v === 0 ? k + 1 : this.shared;
  }

  /** Records uses of blocks [b, b+len) by owner k. */
  markRange(b: number, len: number, k: number): void {
    for (let i = 0; i < len; i++) this.mark(b + i, k);
  }

  /** For each owner, the number of blocks it alone uses, exactly once. */
  exclusiveCounts(owners: number): Float64Array {
    const out = new Float64Array(owners);
    for (const page of this.pages) {
      if (!page) continue;
      for (let i = 0; i < PAGE; i++) {
        const v = page[i];
        if (v !== 0 && v !== this.shared) out[v - 1]++;
      }
    }
    return out;
  }
}

/**
 * One owner byte per block of a data device small enough to hold flat
 * (`blocks` bytes): 0 unused, k + 1 used once by owner k, 255 used more than
 * once. For up to 254 owners; a single pass answers exclusive counts, like
 * OwnerMap at half its memory and without its per-page objects.
 */
export class ByteOwnerMap {
  static readonly MAX_OWNERS = 254;
  private readonly bytes: Uint8Array;

  constructor(blocks: number) {
    this.bytes = new Uint8Array(blocks);
  }

  /** Records uses of blocks [b, b+len) by owner k (0-based, below MAX_OWNERS). */
  markRange(b: number, len: number, k: number): void {
    const a = this.bytes;
    const v = k + 1;
    for (let i = b, e = b + len; i < e; i++) a[i] = a[i] === 0 ? v : 255;
  }

  /** For each owner, the number of blocks it alone uses, exactly once. */
  exclusiveCounts(owners: number): Float64Array {
    const out = new Float64Array(owners);
    const a = this.bytes;
    const n = a.length;
    // Unused blocks come in long stretches: skip them four at a time.
    const words = new Uint32Array(a.buffer, a.byteOffset, n >>> 2);
    for (let w = 0; w < words.length; w++) {
      if (words[w] === 0) continue;
      for (let i = w << 2, e = i + 4; i < e; i++) {
        const v = a[i];
        if (v !== 0 && v !== 255) out[v - 1]++;
      }
    }
    for (let i = words.length << 2; i < n; i++) {
      const v = a[i];
      if (v !== 0 && v !== 255) out[v - 1]++;
    }
    return out;
  }
}

/**
 * Half a byte per block, for up to 14 owners: 0 unused, k + 1 used once by
 * owner k, 15 used more than once. ByteOwnerMap's single pass at half its
 * memory (a 20M-block data device: 10 MiB, not 20) for the pools most have,
 * with few thin devices.
 */
export class NibbleOwnerMap {
  static readonly MAX_OWNERS = 14;
  private readonly bytes: Uint8Array;

  constructor(blocks: number) {
    this.bytes = new Uint8Array(Math.ceil(blocks / 2));
  }

  /** Records uses of blocks [b, b+len) by owner k (0-based, below MAX_OWNERS). */
  markRange(b: number, len: number, k: number): void {
    const a = this.bytes;
    const v = k + 1;
    const e = b + len;
    let i = b;
    // An odd first block: its high nibble alone.
    if (i < e && i & 1) {
      const x = a[i >>> 1];
      a[i >>> 1] = (x & 0x0f) | ((x >>> 4 === 0 ? v : 15) << 4);
      i++;
    }
    // Whole bytes: both nibbles; an untouched byte (the common case) in one store.
    const vv = v | (v << 4);
    for (; i + 1 < e; i += 2) {
      const x = a[i >>> 1];
      if (x === 0) a[i >>> 1] = vv;
      else a[i >>> 1] = ((x & 0x0f) === 0 ? v : 15) | ((x >>> 4 === 0 ? v : 15) << 4);
    }
    if (i < e) {
      const x = a[i >>> 1];
      a[i >>> 1] = (x & 0xf0) | ((x & 0x0f) === 0 ? v : 15);
    }
  }

  /** For each owner, the number of blocks it alone uses, exactly once. */
  exclusiveCounts(owners: number): Float64Array {
    const out = new Float64Array(owners);
    const a = this.bytes;
    const n = a.length;
    // Unused blocks come in long stretches: skip them eight at a time.
    const words = new Uint32Array(a.buffer, a.byteOffset, n >>> 2);
    const count = (x: number): void => {
      const lo = x & 0x0f;
      const hi = x >>> 4;
      if (lo !== 0 && lo !== 15) out[lo - 1]++;
      if (hi !== 0 && hi !== 15) out[hi - 1]++;
    };
    for (let w = 0; w < words.length; w++) {
      if (words[w] === 0) continue;
      for (let i = w << 2, e = i + 4; i < e; i++) count(a[i]);
    }
    for (let i = words.length << 2; i < n; i++) count(a[i]);
    return out;
  }
}

/**
 * Two bits per block: used 0, 1 or more than once (4 blocks a byte). Answers
 * which blocks are shared, not by whom: exclusive counts take a second pass
 * that asks `sharedIn` of each owner's blocks. For devices too large, or
 * owners too many, for ByteOwnerMap.
 */
export class UseCounts {
  private readonly bits: Uint8Array;
  /** Some block is used more than once. */
  anyShared = false;

  constructor(blocks: number) {
    this.bits = new Uint8Array(Math.ceil(blocks / 4));
  }

  /** Records one use of each of blocks [b, b+len). */
  markRange(b: number, len: number): void {
    const a = this.bits;
    for (let i = b, e = b + len; i < e; i++) {
      const sh = (i & 3) << 1;
      const s = (a[i >>> 2] >>> sh) & 3;
      if (s === 0) a[i >>> 2] |= 1 << sh;
      else if (s === 1) {
        a[i >>> 2] ^= 3 << sh; // 01 -> 10
        this.anyShared = true;
      }
    }
  }

  /** How many of blocks [b, b+len) are used more than once. */
  sharedIn(b: number, len: number): number {
    const a = this.bits;
    let n = 0;
    for (let i = b, e = b + len; i < e; i++) if ((a[i >>> 2] >>> ((i & 3) << 1)) & 2) n++;
    return n;
  }
}
