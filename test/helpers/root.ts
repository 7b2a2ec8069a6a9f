// Gate for host tests that need root (mknod, mounting a tmpfs): they run when
// the suite runs as root (CI does), are skipped loudly otherwise, and fail
// instead when DMTHIN_REQUIRE_ROOT=1, so a CI run can never pass them unrun.

export const IS_ROOT = process.getuid?.() === 0;

const requireRoot = (): boolean => process.env.DMTHIN_REQUIRE_ROOT === '1';
const warned = new Set<string>();

/**
 * The skip-or-fail decision for something root-only that is missing: throws
 * under DMTHIN_REQUIRE_ROOT=1, else warns once on stderr. `why` says what is missing.
 */
export function rootGate(name: string, why: string): void {
  if (requireRoot()) throw new Error(`${name}: needs root (${why}), and DMTHIN_REQUIRE_ROOT=1`);
  if (warned.has(name)) return;
  warned.add(name);
  process.stderr.write(`\n*** WARNING: SKIPPING "${name}": ${why}. Run as root (CI does) or set DMTHIN_REQUIRE_ROOT=1 to make this a failure. ***\n\n`);
}

/** test() that needs root: runs as root, else skipped with the reason in its title (or fails, see above). */
export function testAsRoot(name: string, fn: jest.ProvidesCallback, timeout?: number): void {
  if (IS_ROOT) {
    test(name, fn, timeout);
  } else if (requireRoot()) {
    test(`${name} (requires root, DMTHIN_REQUIRE_ROOT=1)`, () => rootGate(name, 'not running as root'));
  } else {
    rootGate(name, 'not running as root');
    test.skip(`${name} [SKIPPED: NOT ROOT]`, fn, timeout);
  }
}
