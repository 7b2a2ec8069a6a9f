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
