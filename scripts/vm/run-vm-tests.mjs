#!/usr/bin/env node
// `npm run test:vm`: the root-VM jest suite (test/vm/**/*.vm.test.ts,
// jest.vm.config.js) in one boot of the test VM (vm/run-in-vm.mjs, the code
// under `dmthin-vm`), and the tests that drive
// dm-thin into its metadata-failure paths (*.isolated.vm.test.ts) in a second
// boot of their own, so that a kernel fault they may provoke cannot take the
// rest of the suite down with it. Extra arguments go to jest, in one boot
// (e.g. `npm run test:vm -- -t thin_dump`).
//
// On the host, before booting: rebuild the native addon and dist/ when
// their sources are newer, and transpile src/ and test/ TypeScript into
// the cache that the guest's jest
// transformer reads (compiling inside the emulated guest would cost seconds).
//
// Missing prerequisites (qemu, busybox-static, cpio, kmod, the kernel
// package): a loud skip with exit 0, or exit 1 when DMTHIN_REQUIRE_VM=1.
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PACKAGE_ROOT, prepareAssets, runInVm, VmUnavailableError } from '../../vm/run-in-vm.mjs';

const { ISOLATED, filesToRetry, guestCpus, isIsolated, isolatedWeight, kernelFault, shardCount, splitForShards } = createRequire(import.meta.url)('./plan.cjs');

const root = PACKAGE_ROOT;
const jestArgs = process.argv.slice(2);
const required = process.env.DMTHIN_REQUIRE_VM === '1';
const t0 = Date.now();
const log = (m) => process.stderr.write(`[vm] ${m}\n`);
const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;

function walk(dir, pred, out = []) {
  if (!existsSync(dir)) return out;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      if (e.name !== 'node_modules') walk(p, pred, out);
    } else if (pred(p)) out.push(p);
  }
  return out;
}

/** Prints the loud "cannot run the VM" message. */
export function printUnavailable(err, what = 'root-VM tests') {
  const reasons = err.reasons ?? [String(err.message ?? err)];
  const required = process.env.DMTHIN_REQUIRE_VM === '1';
  const bar = '!'.repeat(78);
  process.stderr.write(
    [
      '',
      bar,
      `!!! ${what}: ${required ? 'FAILED' : 'SKIPPED'}: cannot boot the test VM on this machine.`,
      ...reasons.map((r) => `!!!   - ${r}`),
      '!!! The dm-thin tests need qemu-system-x86, busybox-static, cpio, kmod and the',
      '!!! Debian kernel package (fetched with apt-get download); `.ci/run` installs them.',
      required
        ? '!!! DMTHIN_REQUIRE_VM=1 is set, so this is a failure.'
        : '!!! Nothing that needs a real kernel was tested. Set DMTHIN_REQUIRE_VM=1 to make this fatal.',
      bar,
      '',
    ].join('\n'),
  );
}

const isTs = (p) => p.endsWith('.ts') && !p.endsWith('.d.ts');

function step(what, cmd, args) {
  const t = Date.now();
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.error || r.status !== 0) {
    log(`${what} failed (${r.error?.message ?? `status ${r.status}`})`);
    return false;
  }
  log(`${what}: ${secs(Date.now() - t)}`);
  return true;
}

/** dist/ is stale when some src/**.ts has no dist/**.js at least as new. */
function distIsStale() {
  for (const src of walk(join(root, 'src'), isTs)) {
    const out = join(root, 'dist', relative(join(root, 'src'), src)).replace(/\.ts$/, '.js');
    if (!existsSync(out) || statSync(out).mtimeMs < statSync(src).mtimeMs) return true;
  }
  return false;
}

/** The addon is stale when missing or older than binding.gyp or a native/ source. */
function nativeIsStale() {
  const addon = join(root, 'build', 'Release', 'dmthin.node');
  if (!existsSync(addon)) return true;
  const built = statSync(addon).mtimeMs;
  const sources = [join(root, 'binding.gyp'), ...walk(join(root, 'native'), () => true)];
  return sources.some((f) => existsSync(f) && statSync(f).mtimeMs > built);
}

async function main() {
  // 1. Can we boot at all? (Builds the kernel + initramfs cache on first use.)
  try {
    prepareAssets({ log });
  } catch (err) {
    if (!(err instanceof VmUnavailableError)) throw err;
    printUnavailable(err);
    return required ? 1 : 0;
  }

  const tests = walk(join(root, 'test', 'vm'), (p) => p.endsWith('.vm.test.ts'));
  if (tests.length === 0) {
    log('no test/vm/**/*.vm.test.ts files: nothing to run');
    return 1;
  }

  // 2. Host-side preparation.
  const node = process.execPath;
  if (lstatSync(join(root, 'build'), { throwIfNoEntry: false })?.isSymbolicLink()) {
    // A build shared with another checkout (a git worktree's symlink): file
    // times say nothing about its sources, and rebuilding would change
    // another checkout's addon under it.
    log(`build/ is a symlink (${readlinkSync(join(root, 'build'))}): using that addon as it is, not rebuilding it`);
  } else if (nativeIsStale()) {
    if (!step('building the native addon (npm run build:native)', 'npm', ['run', '--silent', 'build:native'])) return 1;
  }
  if (distIsStale()) {
    if (!step('building dist/ (tsc -p tsconfig.json)', node, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'])) return 1;
  }
  const tp = Date.now();
  const transform = createRequire(import.meta.url)('./ts-transform.cjs');
  const files = [...walk(join(root, 'src'), isTs), ...walk(join(root, 'test'), isTs)];
  const { compiled, cached } = transform.precompile(files);
  log(`TypeScript for the guest: ${compiled} transpiled, ${cached} cached (${secs(Date.now() - tp)})`);

  // 3. The suite in SHARDS guests at once (each test file in one of them),
  // and the isolated tests in a boot of their own, started as soon as a
  // guest has finished: no more than SHARDS guests run at a time (each keeps
  // about one host core busy), and no core waits for the slowest shard.
  const main = tests.filter((t) => !isIsolated(t));
  const slots = jestArgs.length > 0 ? 1 : shardCount();
  const shards = jestArgs.length > 0 ? [] : splitForShards(main, slots, undefined, isolatedWeight(tests));
  const boots =
    jestArgs.length > 0
      ? [{ label: 'root-VM suite', args: jestArgs }]
      : [
          ...shards.map((files, i) => ({
            label: shards.length > 1 ? `root-VM suite (guest ${i + 1} of ${shards.length})` : 'root-VM suite',
            prefix: shards.length > 1 ? `[g${i + 1}] ` : '',
            args: ['--testPathIgnorePatterns', ISOLATED, '--', ...files.map(pathPattern)],
            files,
          })),
          ...(tests.some(isIsolated)
            ? [{ label: 'root-VM isolated tests', prefix: shards.length > 1 ? '[iso] ' : '', args: ['--testPathPattern', ISOLATED] }]
            : []),
        ];
  const cpus = guestCpus(Math.min(slots, boots.length));
  for (const b of boots) b.cpus = cpus;
  const timeoutS = Number(process.env.DMTHIN_VM_TIMEOUT) > 0 ? Number(process.env.DMTHIN_VM_TIMEOUT) : 2400;
  let status = 0;
  let next = 0;
  const worker = async () => {
    while (next < boots.length) {
      const st = await runBoot(boots[next++], timeoutS, transform);
      if (st !== 0 && status === 0) status = st || 1;
    }
  };
  await Promise.all(Array.from({ length: Math.min(slots, boots.length) }, worker));
  process.stderr.write(`[vm] root-VM tests ${status === 0 ? 'PASSED' : 'FAILED'} - total ${secs(Date.now() - t0)} wall\n`);
  return status;
}

/** A jest path pattern matching exactly this file. */
function pathPattern(file) {
  return `${relative(root, file).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`;
}

/** A boot, and once more if the guest kernel faulted and a test failed; returns jest's status. */
async function runBoot(b, timeoutS, transform) {
  let r = await bootOnce(b, timeoutS, transform);
  // The guest kernel (Debian's 6.1) has faulted on rare occasions inside
  // dm's own code (an oops in dm_ima_measure_on_device_remove, slab
  // corruption after a pool's metadata device failed). A kernel fault is
  // not a test failure, and it poisons the rest of that boot: when a boot
  // failed AND logged a kernel fault, its files that had not passed run once
  // more in a fresh guest, saying so. A failure without a fault, or a second
  // one, stands.
  if (r.status !== 0 && r.oops) {
    // The files that passed before the fault stand; the rest run again.
    const again = b.files && filesToRetry(r.output, b.files.map((f) => relative(root, f))).map((f) => join(root, f));
    const retry = again?.length ? { ...b, args: ['--testPathIgnorePatterns', ISOLATED, '--', ...again.map(pathPattern)] } : b;
    process.stderr.write(
      `[vm] WARNING: the guest kernel faulted during the ${b.label} (${r.oops}); ` +
        `${retry === b ? "that boot's results are void - running it again" : `running the ${again.length} of its ${b.files.length} test files that did not pass again`} in a fresh guest (once)\n`,
    );
    r = await bootOnce(retry, timeoutS, transform);
  } else if (r.oops) {
    process.stderr.write(`[vm] WARNING: the guest kernel faulted during the ${b.label} (${r.oops}), though every test passed\n`);
  }
  return r.status;
}

/** A console sink that writes whole lines, each starting with `prefix`. */
function linePrefixer(prefix) {
  let rest = '';
  const sink = (text) => {
    rest += text;
    const cut = rest.lastIndexOf('\n');
    if (cut < 0) return;
    process.stdout.write(rest.slice(0, cut + 1).replace(/^(?=[^\n])/gm, prefix));
    rest = rest.slice(cut + 1);
  };
  process.on('exit', () => rest && process.stdout.write(`${prefix}${rest}\n`));
  return sink;
}

/** One boot running jest with `b.args`; returns its status and the first kernel fault seen, if any. */
async function bootOnce(b, timeoutS, transform) {
  const tb = Date.now();
  const r = await runInVm({
    command: [process.execPath, join(root, 'node_modules', 'jest', 'bin', 'jest.js'), '--config', join(root, 'jest.vm.config.js'), ...b.args],
    cwd: root,
    cpus: b.cpus,
    env: { DMTHIN_VM_TS_CACHE: transform.cacheDir() },
    // jest and its dependencies load far faster from RAM than over 9p; the
    // big packages a test run does not read stay on 9p (symlinked).
    copyToTmpfs:
      process.env.DMTHIN_VM_NO_COPY === '1'
        ? []
        : [{ dir: join(root, 'node_modules'), exclude: ['typescript', 'ts-jest', '@types', 'caniuse-lite', 'handlebars', 'uglify-js', '.cache'] }],
    timeoutMs: timeoutS * 1000,
    log: b.prefix ? (m) => log(`${b.prefix}${m}`) : log,
    // Guests running side by side: whole lines, each marked with its guest.
    ...(b.prefix ? { stream: linePrefixer(b.prefix) } : {}),
  });
  if (r.error) log(`ERROR: ${r.error}`);
  const ok = r.status === 0;
  const boot = r.bootMs === null ? '?' : secs(r.bootMs);
  const suite = r.bootMs === null ? '?' : secs(r.wallMs - r.bootMs);
  process.stderr.write(
    `[vm] ${b.label} ${ok ? 'PASSED' : 'FAILED'}` +
      `${r.status !== null && !ok ? ` (jest exit status ${r.status})` : ''}${r.error ? ` (${r.error.split('\n')[0]})` : ''}` +
      ` - guest boot ${boot}, tests in the guest ${suite} (jest start-up included), ${secs(Date.now() - tb)} wall\n`,
  );
  let kernelLog = r.output;
  if (r.outDir && existsSync(join(r.outDir, 'dmesg.txt'))) kernelLog += readFileSync(join(r.outDir, 'dmesg.txt'), 'utf8');
  return { status: r.status, oops: kernelFault(kernelLog), output: r.output ?? '' };
}

// Run only as a program: importing this file must not start a suite.
if (process.argv[1] && fileURLToPath(import.meta.url) === realpathSync(process.argv[1])) main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`[vm] ${err.stack ?? err}\n`);
    process.exit(1);
  },
);
