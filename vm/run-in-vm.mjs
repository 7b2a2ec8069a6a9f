// runInVm(): runs a command as root inside a throwaway QEMU guest that boots
// Debian's kernel (with device-mapper, dm-thin-pool, loop, ...) and sees this
// machine's whole filesystem read-only, except the command's working folder,
// which it may write. The library under `dmthin-vm` (vm/dmthin-vm.mjs) and
// dmthin's own root-VM suite (scripts/vm/run-vm-tests.mjs); see
// docs/testing.md.
//
//   import { runInVm } from './vm/run-in-vm.mjs';   (in this package; not a public API)
//   const { status, output } = await runInVm({ command: ['dmsetup', 'version'] });
//
// How a run works:
//   1. prepareAssets() makes sure the kernel and initramfs are in the cache.
//   2. A fresh host folder (the "out" share) gets job.sh: env, cd, command.
//   3. qemu boots; init.sh mounts the host root over 9p (read-only), the
//      working folder over 9p again (writable) on the same path, the out
//      share on /run/dmthin-vm/out, loads the modules, chroots into the host
//      root and runs job.sh. The console (stdout + stderr of the command,
//      merged) is streamed to our stdout as it comes.
//   4. init.sh writes the command's exit status to the out share (`status`)
//      and prints it on the console behind a per-run marker; we read the file
//      first and fall back to the marker. Then the guest powers off.
//   5. A host-side timer kills qemu when the time is up; a boot that never
//      reaches the command is killed and started again once; a guest that
//      does not power off after the command's exit line is stopped.
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { StringDecoder } from 'node:string_decoder';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { cacheDir, checkPrerequisites, PACKAGE_ROOT, prepareAssets, qemuBinary, VmError, VmUnavailableError } from './assets.mjs';

export { cacheDir, checkPrerequisites, PACKAGE_ROOT, prepareAssets, VmError, VmUnavailableError };

/** Where things are inside the guest (chroot view). */
export const GUEST = {
  out: '/run/dmthin-vm/out',
  scratch: '/run/dmthin-vm/scratch',
  home: '/run/dmthin-vm/home',
  tmpFallback: '/run/dmthin-vm/tmp',
};

/** Host variables handed to the guest command unless overridden. */
const INHERITED_ENV = /^(CI|FORCE_COLOR|NO_COLOR|LANG|LC_ALL|TZ|DMTHIN_.*)$/;

function shq(s) {
  return `'${String(s).replace(/'/g, `'\\''`)}'`;
}

function under(path, dir) {
  return path === dir || path.startsWith(dir + '/');
}

function envNumber(name, fallback) {
  const v = process.env[name];
  const n = v === undefined || v === '' ? NaN : Number(v);
  return Number.isFinite(n) && n > 0 ? n : fallback;
}

/**
 * Software emulation (tcg) unless DMTHIN_VM_ACCEL says otherwise. KVM is
 * opt-in (DMTHIN_VM_ACCEL=kvm, usually with DMTHIN_VM_CPU=host): on the
 * development and CI machines /dev/kvm exists but does not work (nested).
 */
function accelerator() {
  return process.env.DMTHIN_VM_ACCEL || 'tcg';
}

/**
 * Runs `command` as root in the guest.
 *
 * @param {object} o
 * @param {string[]|string} o.command  argv (exec'd as is) or a shell command line (sh -c)
 * @param {string} [o.cwd]             working directory (a host path; same path in the guest)
 * @param {Record<string,string>} [o.env]  extra environment (on top of the defaults below)
 * @param {number} [o.timeoutMs]       default $DMTHIN_VM_TIMEOUT seconds, else 600 s
 * @param {number} [o.bootTimeoutMs]   a boot that has not reached the command by then is killed
 *   and started again (default $DMTHIN_VM_BOOT_TIMEOUT seconds, else 180 s)
 * @param {number} [o.bootRetries]     how many times a stuck boot is started again (default 1)
 * @param {number} [o.memoryMb]        default $DMTHIN_VM_MEMORY, else 2048
 * @param {number} [o.cpus]            default $DMTHIN_VM_CPUS, else 2
 * @param {boolean|((text:string)=>void)} [o.stream]  print the console live (default true: to stdout)
 * @param {(msg:string)=>void} [o.log] harness messages (default: stderr with a [vm] prefix)
 * @param {(string|{dir:string, exclude?:string[]})[]} [o.copyToTmpfs]  host folders the guest
 *   should read from RAM: a tmpfs copy mounted over the same path (writes there stay in the
 *   guest); `exclude` lists entries (relative paths) left out of the copy and symlinked to
 *   the 9p original instead (big ones the run rarely reads)
 * @param {boolean} [o.writableCwd]    mount `cwd` writable in the guest (default true): files the
 *   command writes there land on the host
 * @param {string} [o.kernel]          kernel version or package (see prepareAssets)
 * @param {AbortSignal} [o.signal]    aborting it kills the guest (the result then has
 *   status null and `aborted` true)
 * @param {boolean} [o.keep]           keep the out folder (also with DMTHIN_VM_KEEP=1)
 * @param {boolean} [o.keepOnFailure]  keep it when the command fails (default true; it is
 *   always kept when the guest fails or times out)
 * @returns {Promise<{status:number|null, output:string, timedOut:boolean, aborted:boolean, error?:string,
 *           bootMs:number|null, wallMs:number, outDir:string|null}>}
 *   status: the command's exit status; null when it did not finish (timeout,
 *   boot failure, qemu error: see `error`).
 *
 * The guest command sees: root, the host's files read-only except `cwd`, the
 * host's PATH (plus the sbin folders), DMTHIN_IN_VM=1,
 * DMTHIN_VM_SCRATCH (tmpfs for loop backing files), DMTHIN_VM_OUT (writable,
 * ends up in outDir on the host), TMPDIR and HOME on tmpfs, /dev/mapper/control.
 * Throws VmUnavailableError when a prerequisite is missing, VmError (EINVAL)
 * for a working folder that cannot be shared writable.
 */
export async function runInVm(o) {
  const started = Date.now();
  const log = o.log ?? ((m) => process.stderr.write(`[vm] ${m}\n`));
  const cwd = resolve(o.cwd ?? process.cwd());
  const writableCwd = o.writableCwd ?? true;
  if (writableCwd && cwd === '/') {
    // It would make the guest's whole view of the host writable.
    throw new VmError('EINVAL', 'the working folder is /, which cannot be shared writable with the guest: run from a project folder', { path: cwd });
  }
  const assets = prepareAssets({ log, kernel: o.kernel });
  const qemu = qemuBinary();
  const timeoutMs = o.timeoutMs ?? envNumber('DMTHIN_VM_TIMEOUT', 600) * 1000;
  const memoryMb = o.memoryMb ?? envNumber('DMTHIN_VM_MEMORY', 2048);
  const cpus = o.cpus ?? envNumber('DMTHIN_VM_CPUS', 2);
  const keep = o.keep ?? process.env.DMTHIN_VM_KEEP === '1';
  const runId = randomBytes(8).toString('hex');

  const outDir = mkdtempSync(join(tmpdir(), 'dmthin-vm-'));
  const tmpInGuest = under(cwd, '/tmp') ? GUEST.tmpFallback : '/tmp';

  // The caller's PATH too, so that what `npm run` or npx put there (e.g.
  // node_modules/.bin) is found in the guest as well.
  const hostPath = (process.env.PATH ?? '').split(':').filter((d) => d.startsWith('/'));
  const env = {
    PATH: [...new Set(['/usr/local/sbin', '/usr/sbin', '/sbin', ...hostPath, '/usr/local/bin', '/usr/bin', '/bin', dirname(process.execPath)])].join(':'),
    LANG: 'C.UTF-8',
    TERM: 'dumb',
    ...Object.fromEntries(Object.entries(process.env).filter(([k]) => INHERITED_ENV.test(k))),
    ...(process.stdout.isTTY && !process.env.NO_COLOR ? { FORCE_COLOR: '1' } : {}),
    ...o.env,
    HOME: o.env?.HOME ?? GUEST.home,
    TMPDIR: tmpInGuest,
    DMTHIN_IN_VM: '1',
    DMTHIN_VM_SCRATCH: GUEST.scratch,
    DMTHIN_VM_OUT: GUEST.out,
    DMTHIN_VM_KERNEL: assets.version,
  };
  for (const k of Object.keys(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) {
      rmSync(outDir, { recursive: true, force: true });
      throw new VmError('EINVAL', `bad environment variable name for the guest: ${k}`);
    }
  }
  // Folders to read from the guest's RAM instead of 9p: tarred here, unpacked
  // in the guest onto a tmpfs mounted over the same path. Reading thousands of
  // small files over 9p under emulation is the slowest part of starting jest
  // (node_modules: ~25 s over 9p, ~6 s to unpack + ~9 s to start from tmpfs).
  // Excluded entries stay readable over 9p: the original folder is
  // bind-mounted aside first and they are symlinked from the copy.
  const copies = [];
  for (const [i, spec] of (o.copyToTmpfs ?? []).entries()) {
    const dir = resolve(typeof spec === 'string' ? spec : spec.dir);
    const exclude = (typeof spec === 'string' ? [] : spec.exclude ?? []).filter((e) => existsSync(join(dir, e)));
    const tarName = `copy-${i}.tar`;
    const r = spawnSync('tar', ['-C', dir, ...exclude.map((e) => `--exclude=./${e}`), '-cf', join(outDir, tarName), '.'], { encoding: 'utf8' });
    if (r.status !== 0) {
      log(`warning: cannot tar ${dir} for the guest (${(r.stderr || r.error?.message || '').trim()}); it will be read over 9p`);
      continue;
    }
    const aside = `/run/dmthin-vm/orig/${i}`;
    copies.push(
      [
        `mkdir -p ${aside} && mount --bind ${shq(dir)} ${aside} &&`,
        `mount -t tmpfs -o mode=755 tmpfs ${shq(dir)} &&`,
        `tar -C ${shq(dir)} -xf ${GUEST.out}/${tarName}`,
        ...exclude.map((e) => `&& ln -s ${shq(`${aside}/${e}`)} ${shq(join(dir, e))}`),
        `|| { echo "[vm] could not copy ${dir.replace(/[`$"\\]/g, '')} into the guest's RAM; reading it over 9p" >&2; umount ${shq(dir)} 2>/dev/null; }`,
      ].join(' '),
      `rm -f ${GUEST.out}/${tarName}`,
    );
  }
  const cmdLine = Array.isArray(o.command)
    ? `exec ${o.command.map(shq).join(' ')}`
    : `exec /bin/sh -c ${shq(o.command)}`;
  const job = [
    '#!/bin/sh',
    '# written by vm/run-in-vm.mjs; run by init.sh inside the guest',
    ...Object.entries(env).map(([k, v]) => `export ${k}=${shq(v)}`),
    ...copies,
    `cd ${shq(cwd)} || { echo "[vm] cannot cd to ${cwd.replace(/[`$"\\]/g, '')} in the guest" >&2; exit 126; }`,
    cmdLine,
    '',
  ].join('\n');
  writeFileSync(join(outDir, 'job.sh'), job, { mode: 0o755 });
  writeFileSync(join(outDir, 'cwd'), cwd + '\n');
  if (writableCwd) writeFileSync(join(outDir, 'cwd-writable'), '');

  const kmsg = process.env.DMTHIN_VM_KMSG === '1';
  const append = [
    'console=ttyS0',
    kmsg ? 'loglevel=7' : 'quiet loglevel=1',
    'panic=-1',
    'rdinit=/init',
    `dmthin_vm.id=${runId}`,
    // Extra kernel arguments for debugging, e.g. slub_debug=FZP.
    ...(process.env.DMTHIN_VM_KERNEL_ARGS ? [process.env.DMTHIN_VM_KERNEL_ARGS] : []),
  ].join(' ');
  const args = [
    '-accel', accelerator(),
    '-m', String(memoryMb),
    '-smp', String(cpus),
    '-cpu', process.env.DMTHIN_VM_CPU || 'max',
    '-nographic',
    '-no-reboot',
    '-nic', 'none',
    '-kernel', assets.kernel,
    '-initrd', assets.initrd,
    '-append', append,
    '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
    '-virtfs', `local,path=${outDir.replace(/,/g, ',,')},mount_tag=dmthinout,security_model=none,multidevs=remap`,
    // security_model=none: files the guest's root creates belong to whoever runs qemu.
    ...(writableCwd ? ['-virtfs', `local,path=${cwd.replace(/,/g, ',,')},mount_tag=dmthincwd,security_model=none,multidevs=remap`] : []),
  ];

  const sink = o.stream === false ? null : typeof o.stream === 'function' ? o.stream : (t) => process.stdout.write(t);
  let output = '';
  const OUTPUT_CAP = 32 << 20;
  const emit = (text) => {
    if (!text) return;
    if (output.length < OUTPUT_CAP) output += text;
    sink?.(text);
  };

  let bootMs = null;
  let spawnedAt = started;
  let consoleStatus = null;
  const readyMark = `DMTHIN-VM-READY:${runId}`;
  const exitMark = `DMTHIN-VM-EXIT:${runId}:`;
  // Console phases: 'boot' (firmware and kernel chatter: held back, shown
  // only if the guest never gets ready), 'run' (the command: streamed),
  // 'done' (after the exit line: power-off noise, dropped).
  let phase = 'boot';
  const bootLines = [];
  let pending = '';
  let flushTimer = null;
  const handleLine = (line, nl) => {
    let text = line.replace(/\r+$/, '');
    if (phase === 'boot') {
      const r = text.indexOf(readyMark);
      const b = text.indexOf(exitMark);
      if (b >= 0 && r < 0) {
        consoleStatus = text.slice(b + exitMark.length).trim(); // 'boot-failed'
        phase = 'failed';
        return;
      }
      if (r < 0) {
        const clean = text.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1bc/g, '');
        if (kmsg || clean.startsWith('[vm-init]')) emit(clean + '\n');
        else bootLines.push(clean);
        return;
      }
      bootMs = Date.now() - spawnedAt;
      phase = 'run';
      text = text.slice(r + readyMark.length);
      if (!text) return;
    }
    if (phase === 'done' || phase === 'failed') {
      if (kmsg) emit(text + (nl ? '\n' : ''));
      return;
    }
    const e = text.indexOf(exitMark);
    if (e >= 0) {
      consoleStatus = text.slice(e + exitMark.length).trim();
      phase = 'done';
      text = text.slice(0, e);
      nl = text.length > 0 && nl;
    }
    emit(text + (nl ? '\n' : ''));
  };
  const decoder = new StringDecoder('utf8'); // a chunk may end inside a UTF-8 sequence
  const onData = (chunk) => {
    pending += decoder.write(chunk);
    let i;
    while ((i = pending.indexOf('\n')) >= 0) {
      handleLine(pending.slice(0, i), true);
      pending = pending.slice(i + 1);
    }
    // Show a partial line (a prompt, a progress dot) after a short pause,
    // unless it may be the start of one of our markers.
    if (flushTimer) clearTimeout(flushTimer);
    flushTimer = null;
    if (phase === 'run' && pending && !pending.includes('DMTHIN-VM')) {
      flushTimer = setTimeout(() => {
        flushTimer = null;
        if (phase === 'run' && pending && !pending.includes('DMTHIN-VM') && !/D(M(T(H(I(N(-(V(M)?)?)?)?)?)?)?)?$/.test(pending)) {
          emit(pending.replace(/\r/g, ''));
          pending = '';
        }
      }, 200);
    }
  };

  // A guest that never reaches READY (a boot stuck under emulation; CI once
  // had a dmthin-vm guest not finish in 120 s, where it stuck unknown) is
  // killed after bootTimeoutMs and booted again: nothing of the command has
  // run yet, so a second boot is safe. After the command's exit line, qemu gets POWEROFF_GRACE_MS to end;
  // the status is known by then, so a guest stuck powering off is stopped.
  const bootTimeoutMs = o.bootTimeoutMs ?? envNumber('DMTHIN_VM_BOOT_TIMEOUT', 180) * 1000;
  const bootAttempts = 1 + Math.max(0, o.bootRetries ?? 1);
  const POWEROFF_GRACE_MS = envNumber('DMTHIN_VM_POWEROFF_GRACE', 30) * 1000;

  let child = null;
  const killChild = () => {
    try {
      child?.kill('SIGKILL');
    } catch {
      // already gone
    }
  };
  process.on('exit', killChild);
  const onSignal = (sig) => {
    killChild();
    if (!keep) rmSync(outDir, { recursive: true, force: true });
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    process.kill(process.pid, sig);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    killChild();
  }, timeoutMs);
  const aborted = () => o.signal?.aborted === true;
  o.signal?.addEventListener('abort', killChild, { once: true });

  let qemuErr = '';
  let qemuExit;
  let poweroffStuck = false;
  let bootGaveUp = null;
  for (let attempt = 1; ; attempt++) {
    phase = 'boot';
    bootLines.length = 0;
    pending = '';
    consoleStatus = null;
    qemuErr = '';
    log(`booting kernel ${assets.version} (${accelerator()}, ${cpus} cpus, ${memoryMb} MiB), cwd ${cwd}${attempt > 1 ? ` (attempt ${attempt} of ${bootAttempts})` : ''}`);
    spawnedAt = Date.now();
    child = spawn(qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const thisChild = child;
    let graceTimer = null;
    child.stdout.on('data', (chunk) => {
      onData(chunk);
      if (phase === 'done' && !graceTimer) {
        graceTimer = setTimeout(() => {
          poweroffStuck = true;
          thisChild.kill('SIGKILL');
        }, POWEROFF_GRACE_MS);
      }
    });
    child.stderr.on('data', (d) => {
      qemuErr += d.toString('utf8');
      if (qemuErr.length > 65536) qemuErr = qemuErr.slice(-65536);
    });
    let bootHung = false;
    const bootTimer = setTimeout(() => {
      if (phase !== 'boot') return;
      bootHung = true;
      thisChild.kill('SIGKILL');
    }, bootTimeoutMs);
    if (aborted()) killChild();

    qemuExit = await new Promise((res) => {
      thisChild.on('error', (err) => res({ code: null, signal: null, err }));
      thisChild.on('close', (code, signal) => res({ code, signal, err: null }));
    });
    clearTimeout(bootTimer);
    if (graceTimer) clearTimeout(graceTimer);
    if (flushTimer) clearTimeout(flushTimer);
    flushTimer = null;
    if (!bootHung || timedOut || aborted() || attempt >= bootAttempts) {
      if (bootHung && !timedOut && !aborted()) bootGaveUp = `the guest did not finish booting in ${Math.round(bootTimeoutMs / 1000)} s, ${attempt} times (DMTHIN_VM_BOOT_TIMEOUT=<seconds> gives it longer)`;
      break;
    }
    const last = bootLines.filter((l) => l.trim()).slice(-1)[0] ?? '(no console output)';
    log(`the guest did not finish booting in ${Math.round(bootTimeoutMs / 1000)} s (last console line: ${last.trim().slice(0, 200)}); killed it, booting again`);
  }
  clearTimeout(timer);
  o.signal?.removeEventListener('abort', killChild);
  if (pending) handleLine(pending, false);
  process.removeListener('exit', killChild);
  process.removeListener('SIGINT', onSignal);
  process.removeListener('SIGTERM', onSignal);
  if (poweroffStuck) log(`the guest did not power off within ${POWEROFF_GRACE_MS / 1000} s of the command's end; stopped it (the command's exit status is kept)`);

  let status = null;
  let error;
  let fileStatus = null;
  try {
    fileStatus = readFileSync(join(outDir, 'status'), 'utf8').trim();
  } catch {
    // not written
  }
  const parsed = /^\d+$/.test(fileStatus ?? '') ? fileStatus : consoleStatus;
  if (parsed !== null && /^\d+$/.test(parsed)) status = Number(parsed);
  const wallMs = Date.now() - started;

  if (aborted()) {
    error = 'aborted: the guest was killed at the caller\'s request';
    status = null;
  } else if (timedOut) {
    error = `TIMEOUT: the guest was killed after ${(timeoutMs / 1000).toFixed(0)} s (raise it with DMTHIN_VM_TIMEOUT=<seconds>)`;
    status = null;
  } else if (bootGaveUp) {
    error = bootGaveUp;
    status = null;
  } else if (qemuExit.err) {
    error = `qemu could not be started: ${qemuExit.err.message}`;
  } else if (status === null) {
    const why = consoleStatus === 'boot-failed' ? 'the guest failed to set itself up (see [vm-init] lines above)' : 'the guest stopped without reporting an exit status';
    error = `${why}; qemu exited with ${qemuExit.signal ?? qemuExit.code}${qemuErr.trim() ? `:\n${qemuErr.trim()}` : ''}`;
  }
  if ((phase === 'boot' || phase === 'failed') && !kmsg && bootLines.length) {
    emit(`[vm] guest console before the failure (last lines):\n${bootLines.slice(-60).join('\n')}\n`);
  }
  const keepDir = keep || (status === null && !aborted()) || (status !== 0 && (o.keepOnFailure ?? true));
  if (keepDir) {
    log(`guest out folder kept: ${outDir} (job.sh, status, dmesg.txt)`);
  } else {
    rmSync(outDir, { recursive: true, force: true });
  }
  return { status, output, timedOut, aborted: aborted(), error, bootMs, wallMs, outDir: keepDir ? outDir : null };
}
