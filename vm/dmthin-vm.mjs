#!/usr/bin/env node
// dmthin-vm: runs a command as root in a throwaway QEMU guest with a real
// kernel's device-mapper (dm-thin-pool, loop, ...), in the caller's working
// folder, and exits with the command's status. For integration tests of
// dm-thin code on machines where the tests cannot be root or the kernel has
// no device-mapper. The work is done by runInVm() (run-in-vm.mjs).
import { readFileSync, realpathSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cacheDir, PACKAGE_ROOT, prepareAssets, runInVm, VmError } from './run-in-vm.mjs';

/** dmthin-vm's own failures (no VM, boot failure, timeout, bad arguments); as `env`, `timeout` and `docker run` do, so they differ from any status the command itself is likely to return. */
export const EXIT_VM_FAILURE = 125;

const USAGE = `Usage: dmthin-vm [options] [--] command [args...]
       dmthin-vm --prepare [--kernel VER]

Runs the command as root in a throwaway QEMU guest that boots a Debian kernel
with device-mapper (dm-thin-pool, loop, dm-zero, dm-flakey, dm-delay). The
guest sees this machine's files read-only, except the current folder, which it
may write (files the command writes there stay on the host). The command's
stdout and stderr arrive merged on stdout; dmthin-vm exits with its status, or
${EXIT_VM_FAILURE} when the VM itself fails (one line on stderr says why).

Options:
  --kernel VER     Debian kernel version (e.g. 6.1.0-57-amd64) or package
                   (linux-image-...); default: what linux-image-amd64 depends on
  --mem MiB        guest memory (default 2048, or $DMTHIN_VM_MEMORY)
  --cpus N         guest CPUs (default 2, or $DMTHIN_VM_CPUS)
  --timeout SEC    kill the guest after SEC seconds (default 600, or $DMTHIN_VM_TIMEOUT)
  --env K=V        set a variable for the command (repeatable)
  --prepare        download the kernel and build the initramfs into the cache,
                   then run the command if one is given
  --keep           keep the run's host folder (job.sh, status, dmesg.txt)
  -q, --quiet      no progress lines on stderr (errors still show)
  -V, --version    print the version
  -h, --help       print this help

Needs qemu-system-x86, busybox-static, cpio, kmod and apt access to Debian's
kernel packages. Cache: $DMTHIN_VM_CACHE, default ${process.env.DMTHIN_VM_CACHE ? '(set)' : cacheDir()}.`;

function usageError(message) {
  return new VmError('EINVAL', `${message} (see dmthin-vm --help)`);
}

function positiveInt(flag, v) {
  if (v === undefined) throw usageError(`${flag} needs a value`);
  if (!/^[1-9][0-9]*$/.test(v) || !Number.isSafeInteger(Number(v))) throw usageError(`${flag} must be a positive integer, got '${v}'`);
  return Number(v);
}

/** Parses argv; returns the options for runInVm plus `prepare`, `quiet`, `help`, `version`. */
export function parseArgs(argv) {
  const o = { env: {}, command: [] };
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      i++;
      break;
    }
    if (!a.startsWith('-')) break; // first word of the command
    const [flag, inline] = a.startsWith('--') && a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => (inline !== undefined ? inline : argv[++i]);
    switch (flag) {
      case '--kernel': {
        const v = value();
        if (!v || !/^[A-Za-z0-9][A-Za-z0-9.+~_-]*$/.test(v)) throw usageError(`--kernel wants a kernel version such as 6.1.0-57-amd64, got '${v ?? ''}'`);
        o.kernel = v;
        break;
      }
      case '--mem':
      case '--memory':
        o.memoryMb = positiveInt(flag, value());
        break;
      case '--cpus':
        o.cpus = positiveInt(flag, value());
        break;
      case '--timeout':
        o.timeoutMs = positiveInt(flag, value()) * 1000;
        break;
      case '--env': {
        const kv = value() ?? '';
        const eq = kv.indexOf('=');
        if (eq <= 0 || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(kv.slice(0, eq))) throw usageError(`--env wants NAME=VALUE, got '${kv}'`);
        o.env[kv.slice(0, eq)] = kv.slice(eq + 1);
        break;
      }
      case '--prepare':
        o.prepare = true;
        break;
      case '--keep':
        o.keep = true;
        break;
      case '-q':
      case '--quiet':
        o.quiet = true;
        break;
      case '-h':
      case '--help':
        o.help = true;
        break;
      case '-V':
      case '--version':
        o.version = true;
        break;
      default:
        throw usageError(`unknown option ${flag}`);
    }
  }
  o.command = argv.slice(i);
  return o;
}

/** Runs the CLI; resolves to the exit status. */
export async function main(argv) {
  const fail = (err) => {
    const code = err?.code && !String(err.message).startsWith(err.code) ? ` [${err.code}]` : '';
    process.stderr.write(`dmthin-vm: ${String(err?.message ?? err).split('\n')[0]}${code}\n`);
    return EXIT_VM_FAILURE;
  };
  let o;
  try {
    o = parseArgs(argv);
  } catch (err) {
    return fail(err);
  }
  if (o.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  if (o.version) {
    process.stdout.write(JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')).version + '\n');
    return 0;
  }
  if (!o.command.length && !o.prepare) return fail(usageError('no command given'));
  const log = o.quiet ? () => {} : (m) => process.stderr.write(`[dmthin-vm] ${m}\n`);
  // The reader of our stdout went away (`dmthin-vm -- cmd | head`): the
  // guest is stopped and we end quietly with 128+SIGPIPE, as a shell reports
  // for a command killed by it. Any other write error: the output is incomplete.
  const stop = new AbortController();
  let stdoutError = null;
  process.stdout.on('error', (e) => {
    stdoutError ??= e;
    stop.abort();
  });
  try {
    if (o.prepare) {
      const assets = prepareAssets({ log, kernel: o.kernel });
      log(`ready: kernel ${assets.version} in ${cacheDir()}`);
      if (!o.command.length) return 0;
    }
    const r = await runInVm({
      command: o.command,
      cwd: process.cwd(),
      env: o.env,
      kernel: o.kernel,
      memoryMb: o.memoryMb,
      cpus: o.cpus,
      timeoutMs: o.timeoutMs,
      keep: o.keep,
      // The command's failure is the user's business; keep the run's folder
      // only when the VM itself failed (or on request).
      keepOnFailure: false,
      signal: stop.signal,
      log,
    });
    if (stdoutError?.code === 'EPIPE') return 141;
    if (stdoutError) return fail(new VmError(stdoutError.code ?? 'EIO', `cannot write stdout: ${stdoutError.message}; the command's output is incomplete`));
    if (r.timedOut) {
      const secs = Math.round((o.timeoutMs ?? (Number(process.env.DMTHIN_VM_TIMEOUT) > 0 ? Number(process.env.DMTHIN_VM_TIMEOUT) * 1000 : 600_000)) / 1000);
      return fail(new VmError('ETIMEDOUT', `the guest was killed after ${secs} s, before the command ended (--timeout SEC or DMTHIN_VM_TIMEOUT gives it longer)`));
    }
    if (r.status === null) {
      return fail(new VmError('EIO', (r.error ?? 'the guest did not report an exit status').split('\n').map((l) => l.trim()).filter(Boolean).join(' | ')));
    }
    return r.status;
  } catch (err) {
    if (err instanceof VmError) return fail(err);
    throw err;
  }
}

// Run when executed (also through the node_modules/.bin symlink), not when imported.
if (process.argv[1] && realpathSync(resolve(process.argv[1])) === realpathSync(fileURLToPath(import.meta.url))) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`dmthin-vm: internal error (please report it): ${String(err?.message ?? err).split('\n')[0]}\n`);
      process.exit(EXIT_VM_FAILURE);
    },
  );
}
