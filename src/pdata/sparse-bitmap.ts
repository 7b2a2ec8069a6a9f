/**
 * A 2-bit-per-block "seen once / seen more than once" map over a huge block
 * range, allocated in pages on first touch: memory follows the blocks actually
 * used, not the size of the data device.
 */
const PAGE_BITS = 16; // 65536 blocks per page = 16 KiB of state

export class SeenTwiceMap {
  private readonly once: (Uint32Array | undefined)[] = [];
  private readonly twice: (Uint32Array | undefined)[] = [];

  mark(b: number): void {
    const p = Math.floor(b / 65536);
    const i = b & 0xffff;
    let o = this.once[p];
    if (!o) {
      o = this.once[p] = new Uint32Array(1 << (PAGE_BITS - 5));
      this.twice[p] = new Uint32Array(1 << (PAGE_BITS - 5));
    }
    const w = i >>> 5;
    const m = 1 << (i & 31);
    if (o[w] & m) this.twice[p]![w] |= m;
    else o[w] |= m;
  }

  /** True if the block was marked exactly once. */
  once1(b: number): boolean {
    const p = Math.floor(b / 65536);
    const o = this.once[p];
    if (!o) return false;
    const i = b & 0xffff;
    const m = 1 << (i & 31);
    return (o[i >>> 5] & m) !== 0 && (this.twice[p]![i >>> 5] & m) === 0;
  }
}
