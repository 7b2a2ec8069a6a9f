/**
 * Helpers for the root-VM suite (test/vm/*.vm.test.ts): they run as root in
 * the QEMU guest of scripts/vm/, where device-mapper and loop devices are
 * real but there is no udev and the root filesystem is read-only.
 *
 * - `describeVm` runs a block only where device-mapper is usable (the guest,
 *   or a real machine opted in with DMTHIN_DM_TESTS=1) and skips it elsewhere,
 *   so the host jest run can load (and type-check) these files harmlessly.
 * - `DmSandbox` creates loop devices on tmpfs files and dm devices with
 *   unique names, and `cleanup()` tears all of it down in reverse order, even
 *   after a failure; `useDmSandbox()` wires that into beforeEach/afterEach,
 *   with a last sweep in afterAll.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdirSync, mkdtempSync, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const SECTOR = 512;
export const KiB = 1024;
export const MiB = 1024 * KiB;

export const IN_VM = process.env.DMTHIN_IN_VM === '1';
/**
 * Run the dm tests here? Always in the test VM (where a missing
 * /dev/mapper/control must fail the tests, not skip them); elsewhere only when
 * opted in on a real root machine with DMTHIN_DM_TESTS=1.
 */
export const DM_AVAILABLE = IN_VM || (process.env.DMTHIN_DM_TESTS === '1' && existsSync('/dev/mapper/control'));

/**
 * `describe` in the VM; elsewhere (the host jest run, which only loads and
 * type-checks these files) `describe.skip`, with the reason in the title.
 */
export function describeVm(name: string, fn: () => void): void {
  if (DM_AVAILABLE) describe(name, fn);
  else describe.skip(`${name} [not on the host: runs as root in the test VM, npm run test:vm]`, fn);
}

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  input?: string | Buffer;
  /** Return a non-zero status instead of throwing. */
  allowFail?: boolean;
  timeoutMs?: number;
}

/** Runs a program (no shell), returns its output; throws on failure unless allowFail. */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): RunResult {
  const r = spawnSync(cmd, args as string[], {
    input: opts.input,
    encoding: 'utf8',
    maxBuffer: 256 * MiB,
    timeout: opts.timeoutMs ?? 60_000,
  });
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`);
  const res = { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  if (res.status !== 0 && !opts.allowFail) {
    throw new Error(
      `${cmd} ${args.join(' ')} exited with ${r.status ?? r.signal}\n${(r.stderr || r.stdout).trim()}`,
    );
  }
  return res;
}

/** Is a program on PATH? */
export function haveProgram(name: string): boolean {
  return run('sh', ['-c', `command -v "$1" >/dev/null`, 'sh', name], { allowFail: true }).status === 0;
}

export function sectors(bytes: number): number {
  if (bytes % SECTOR !== 0) throw new Error(`${bytes} is not a whole number of sectors`);
  return bytes / SECTOR;
}

/** A writable folder for backing files: the guest's scratch tmpfs, else TMPDIR. */
export function scratchRoot(): string {
  const dir = process.env.DMTHIN_VM_SCRATCH || tmpdir();
  mkdirSync(dir, { recursive: true });
  return dir;
}

export interface PoolStatus {
  transactionId: number;
  usedMetadataBlocks: number;
  totalMetadataBlocks: number;
  usedDataBlocks: number;
  totalDataBlocks: number;
  /** Root block of the held metadata snapshot, or null ("-"). */
  heldMetadataRoot: number | null;
  mode: string;
  /** Everything after the mode (discard/no-space policies, needs_check, metadata low water mark). */
  rest: string[];
}

/**
 * Parses a thin-pool status line, as printed by `dmsetup status` (with the
 * leading "<start> <length> thin-pool") or just the target's part.
 */
export function parsePoolStatus(line: string): PoolStatus {
  const params = line.trim().replace(/^\d+ \d+ thin-pool /, '');
  const m = /^(\d+) (\d+)\/(\d+) (\d+)\/(\d+) (-|\d+) (\S+)(?: (.*))?$/.exec(params);
  if (!m) throw new Error(`not a thin-pool status line: ${JSON.stringify(line)}`);
  return {
    transactionId: Number(m[1]),
    usedMetadataBlocks: Number(m[2]),
    totalMetadataBlocks: Number(m[3]),
    usedDataBlocks: Number(m[4]),
    totalDataBlocks: Number(m[5]),
    heldMetadataRoot: m[6] === '-' ? null : Number(m[6]),
    mode: m[7],
    rest: m[8] ? m[8].split(' ') : [],
  };
}

export interface LoopDevice {
  /** /dev/loopN */
  path: string;
  /** Backing file on tmpfs. */
  file: string;
  sizeBytes: number;
}

export interface DmDevice {
  name: string;
  /** /dev/mapper/<name> (created with `dmsetup mknodes`: no udev here). */
  path: string;
  major: number;
  minor: number;
  /** "major:minor", usable in other table lines. */
  devt: string;
}

const liveSandboxes = new Set<DmSandbox>();
let sandboxCounter = 0;

/**
 * Owns loop and dm devices for one test and removes them all in cleanup().
 * Device names get a unique prefix (`dmt<pid>x<n>-`), so a leftover from one
 * test never collides with the next.
 */
export class DmSandbox {
  readonly prefix: string;
  readonly dir: string;
  private readonly devices: string[] = [];
  private readonly loops: LoopDevice[] = [];
  private closed = false;

  constructor(label = 'sandbox') {
    this.prefix = `dmt${process.pid}x${++sandboxCounter}`;
    this.dir = mkdtempSync(join(scratchRoot(), `${label.replace(/[^\w.-]/g, '_')}-`));
    liveSandboxes.add(this);
  }

  /** The full dm name for a short name. */
  name(short: string): string {
    return short.startsWith(`${this.prefix}-`) ? short : `${this.prefix}-${short}`;
  }

  /** A sparse file of `sizeBytes` on tmpfs, attached to a free loop device
   * (with `sectorSize`, its logical block size: 4096 for a 4Kn device). */
  loop(sizeBytes: number, label = 'loop', opts: { sectorSize?: number } = {}): LoopDevice {
    const file = join(this.dir, `${label}-${this.loops.length}.img`);
    const fd = openSync(file, 'w');
    try {
      ftruncateSync(fd, sizeBytes);
    } finally {
      closeSync(fd);
    }
    const path = run('losetup', [...(opts.sectorSize ? ['--sector-size', String(opts.sectorSize)] : []), '--find', '--show', file]).stdout.trim();
    const dev = { path, file, sizeBytes };
    this.loops.push(dev);
    return dev;
  }

  /** Creates (and activates) a dm device from one or more table lines. */
  create(short: string, table: string | readonly string[]): DmDevice {
    const name = this.name(short);
    const lines = typeof table === 'string' ? table : table.join('\n');
    run('dmsetup', ['create', name], { input: lines.endsWith('\n') ? lines : `${lines}\n` });
    this.devices.push(name);
    return this.device(name);
  }

  /**
   * Registers a device made by other means (the library, a child process)
   * under `name(short)` for teardown, and returns its full name.
   */
  adopt(short: string): string {
    const name = this.name(short);
    if (!this.devices.includes(name)) this.devices.push(name);
    return name;
  }

  /** Looks up an existing device and makes sure its /dev/mapper node exists. */
  device(short: string): DmDevice {
    const name = this.name(short);
    run('dmsetup', ['mknodes', name]);
    const out = run('dmsetup', ['info', '-c', '--noheadings', '--separator', ':', '-o', 'major,minor', name]).stdout.trim();
    const [major, minor] = out.split(':').map(Number);
    return { name, path: `/dev/mapper/${name}`, major, minor, devt: `${major}:${minor}` };
  }

  /** `dmsetup message <name> <sector> <words...>`; returns its output. */
  message(short: string, sector: number, ...words: string[]): string {
    return run('dmsetup', ['message', this.name(short), String(sector), ...words]).stdout;
  }

  /** `dmsetup status <name>` (first line, with start/length/target). */
  status(short: string): string {
    return run('dmsetup', ['status', this.name(short)]).stdout.trim();
  }

  table(short: string): string {
    return run('dmsetup', ['table', this.name(short)]).stdout.trim();
  }

  poolStatus(short: string): PoolStatus {
    return parsePoolStatus(this.status(short));
  }

  suspend(short: string): void {
    run('dmsetup', ['suspend', this.name(short)]);
  }

  resume(short: string): void {
    run('dmsetup', ['resume', this.name(short)]);
  }

  /** Loads a new table and resumes (suspend + reload + resume). */
  reload(short: string, table: string | readonly string[]): void {
    const lines = typeof table === 'string' ? table : table.join('\n');
    run('dmsetup', ['reload', this.name(short)], { input: lines.endsWith('\n') ? lines : `${lines}\n` });
    this.suspend(short);
    this.resume(short);
  }

  /** Removes one dm device now (it is forgotten by cleanup()). */
  remove(short: string): void {
    const name = this.name(short);
    run('dmsetup', ['remove', '--retry', name]);
    const i = this.devices.indexOf(name);
    if (i >= 0) this.devices.splice(i, 1);
  }

  /**
   * Tears everything down, newest first: dm devices (resumed if suspended,
   * removed, forced if busy), then loop devices, then the backing files.
   * Tries every step; throws once at the end if anything could not be removed.
   */
  cleanup(): void {
    if (this.closed) return;
    this.closed = true;
    liveSandboxes.delete(this);
    // One shell for the whole teardown, and as few dmsetup runs as possible:
    // each costs about 0.5 s under emulation (forking the big jest process
    // and loading dmsetup's libraries over 9p). One listing (name, attr),
    // resume only what is suspended, one `dmsetup remove` for all (in order,
    // newest first), per-device retries with --force only if that failed.
    const script = `
      ours=${shellQuote([...this.devices].reverse().join(' '))}
      info=$(dmsetup info -c --noheadings --separator ' ' -o name,attr 2>/dev/null)
      todo=
      for name in $ours; do
        attr=
        while read -r n a; do [ "$n" = "$name" ] && attr="$a" && break; done <<LIST
$info
LIST
        [ -n "$attr" ] || continue
        case "$attr" in ??s*) dmsetup resume "$name" >/dev/null 2>&1 ;; esac
        todo="$todo $name"
      done
      if [ -n "$todo" ] && ! dmsetup remove --retry $todo >/dev/null 2>&1; then
        for name in $todo; do
          dmsetup info "$name" >/dev/null 2>&1 || continue
          dmsetup remove --retry "$name" >/dev/null 2>&1 ||
            dmsetup remove --force --retry "$name" >/dev/null 2>&1 ||
            echo "dm device $name: $(dmsetup info -c --noheadings -o open,attr "$name" 2>&1)"
        done
      fi
      loops=${shellQuote([...this.loops].reverse().map((l) => l.path).join(' '))}
      if [ -n "$loops" ] && ! losetup -d $loops 2>/dev/null; then
        for loop in $loops; do
          err=$(losetup -d "$loop" 2>&1) || case "$err" in *"No such device"*) ;; *) echo "loop $loop: $err" ;; esac
        done
      fi
      rm -rf ${shellQuote(this.dir)}
    `;
    this.devices.length = 0;
    this.loops.length = 0;
    const r = run('sh', ['-c', script], { allowFail: true });
    const problems = r.stdout.split('\n').filter(Boolean);
    if (r.status !== 0) problems.push(`teardown script exited with ${r.status}: ${r.stderr.trim()}`);
    if (problems.length) throw new Error(`DmSandbox cleanup left devices behind:\n  ${problems.join('\n  ')}`);
  }
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Cleans every sandbox not cleaned yet (used by afterAll). */
export function cleanupAllSandboxes(): void {
  const errors: string[] = [];
  for (const s of [...liveSandboxes]) {
    try {
      s.cleanup();
    } catch (e) {
      errors.push((e as Error).message);
    }
  }
  if (errors.length) throw new Error(errors.join('\n'));
}

/**
 * A fresh DmSandbox for every test of the enclosing describe block, torn down
 * after each test whatever happened. Call at describe level; use the returned
 * getter inside tests.
 */
export function useDmSandbox(label?: string): () => DmSandbox {
  let current: DmSandbox | undefined;
  beforeEach(() => {
    current = new DmSandbox(label ?? expect.getState().currentTestName?.slice(0, 40) ?? 'test');
  });
  afterEach(() => {
    const s = current;
    current = undefined;
    s?.cleanup();
  });
  afterAll(() => cleanupAllSandboxes());
  return () => {
    if (!current) throw new Error('useDmSandbox(): the sandbox exists only while a test runs');
    return current;
  };
}

/** Names of all dm devices on the machine. */
export function dmDeviceNames(): string[] {
  const out = run('dmsetup', ['ls']).stdout.trim();
  if (!out || /^No devices found/.test(out)) return [];
  return out.split('\n').map((l) => l.split(/\s+/)[0]);
}

/** Loop devices with a backing file attached. */
export function attachedLoops(): string[] {
  const out = run('losetup', ['-n', '-O', 'NAME', '-l'], { allowFail: true }).stdout.trim();
  return out ? out.split('\n').map((l) => l.trim()) : [];
}

/**
 * Counts the data blocks mapped for each device in `thin_dump` XML
 * (single_mapping = 1 block, range_mapping = its length).
 */
export function mappedBlocksByDevice(xml: string): Map<number, number> {
  const result = new Map<number, number>();
  const deviceRe = /<device\s[^>]*dev_id="(\d+)"[^>]*>([\s\S]*?)<\/device>/g;
  for (let m = deviceRe.exec(xml); m; m = deviceRe.exec(xml)) {
    let n = 0;
    for (const r of m[2].matchAll(/<range_mapping\s[^>]*length="(\d+)"/g)) n += Number(r[1]);
    n += (m[2].match(/<single_mapping\s/g) ?? []).length;
    result.set(Number(m[1]), n);
  }
  return result;
}
