/**
 * A test's own random choices from a seed (mulberry32): the same seed makes
 * the same choices, so a failure names a seed that reproduces it.
 */
export interface Chooser {
  /** Uniform in [0, 1). */
  next(): number;
  /** Uniform integer in [lo, hi]. */
  int(lo: number, hi: number): number;
  pick<T>(a: readonly T[]): T;
}

export function chooser(seed: number): Chooser {
  let s = (seed * 0x9e3779b1) >>> 0;
  const next = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (lo: number, hi: number): number => lo + Math.floor(next() * (hi - lo + 1));
  const pick = <T>(a: readonly T[]): T => a[Math.floor(next() * a.length)];
  return { next, int, pick };
}
