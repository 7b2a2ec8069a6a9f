// Guest assets for dmthin-vm: a Debian kernel (downloaded with apt-get,
// unpacked with dpkg-deb, never installed system-wide), and an initramfs made
// of a static busybox, vm/init.sh and the kernel modules the guest needs, in
// dependency order.
//
// Everything lands in the cache folder (see cacheDir()), keyed by kernel
// version and a hash of everything that goes into the initramfs, so a second
// run builds nothing.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  accessSync, constants, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, readSync,
  closeSync, readdirSync, renameSync, rmSync, statSync, writeFileSync, chmodSync,
  utimesSync,
} from 'node:fs';
import { homedir } from 'node:os';
import { basename, delimiter, dirname, join, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The dmthin package this file belongs to (a clone, or an install under node_modules/). */
export const PACKAGE_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const INIT_SCRIPT = join(dirname(fileURLToPath(import.meta.url)), 'init.sh');

/** Bumped whenever the layout of the built initramfs changes. */
const ASSETS_FORMAT = 3;

/** Modules the guest cannot work without (dependencies are added). */
export const REQUIRED_MODULES = ['virtio_pci', '9pnet_virtio', '9p', 'dm-thin-pool', 'loop'];
/** Extra targets for tests (zero data devices, fault injection); used when present. */
export const OPTIONAL_MODULES = ['dm-zero', 'dm-flakey', 'dm-delay'];

/**
 * An error of the VM harness, in Node's shape (`code`, plus `path` where one
 * is involved). The harness is plain JavaScript that runs before dmthin's
 * TypeScript is compiled (CI prepares the kernel before `npm ci`), so it
 * cannot use dmthin's own error classes.
 */
export class VmError extends Error {
  constructor(code, message, fields = {}) {
    super(message);
    this.code = code;
    Object.assign(this, fields);
  }

  get name() {
    return this.constructor.name;
  }
}

/**
 * Something the VM needs is missing on this machine. `problems`: what is
 * missing, each with the Debian package that provides it (`pkg`) or another
 * way out (`hint`); `reasons`: the same as one string each; `message`: all of
 * it on one line, ending with the apt-get command that installs what is missing.
 */
export class VmUnavailableError extends VmError {
  constructor(problems) {
    const list = problems.map((p) => (typeof p === 'string' ? { what: p } : p));
    const pkgs = [...new Set(list.filter((p) => p.pkg).map((p) => p.pkg))];
    const hints = list.filter((p) => p.hint).map((p) => p.hint);
    const message = [
      `cannot boot the VM: ${list.map((p) => p.what).join('; ')}`,
      ...(pkgs.length ? [`install ${pkgs.length > 1 ? 'them' : 'it'} with: apt-get install ${pkgs.join(' ')}`] : []),
      ...hints,
    ].join('; ');
    super('ENOENT', message);
    this.problems = list;
    this.reasons = list.map((p) => [p.what, p.pkg ? `apt-get install ${p.pkg}` : p.hint].filter(Boolean).join(': '));
  }
}

/**
 * The cache folder: $DMTHIN_VM_CACHE; else .vm-cache/ in a clone of dmthin;
 * else (installed under node_modules/) a per-user folder,
 * $XDG_CACHE_HOME/dmthin-vm or ~/.cache/dmthin-vm, shared by the projects
 * that use it.
 */
export function cacheDir() {
  if (process.env.DMTHIN_VM_CACHE) return process.env.DMTHIN_VM_CACHE;
  if (!PACKAGE_ROOT.split(sep).includes('node_modules')) return join(PACKAGE_ROOT, '.vm-cache');
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'dmthin-vm');
}

/**
 * Finds an executable: on $DMTHIN_VM_TOOL_PATH alone when set (a
 * colon-separated list of folders), else on PATH plus the sbin folders a
 * non-root PATH may lack.
 */
export function which(name) {
  if (name.includes('/')) return isExecutable(name) ? name : null;
  const own = process.env.DMTHIN_VM_TOOL_PATH;
  const dirs = (own ?? process.env.PATH ?? '').split(delimiter).filter(Boolean);
  for (const extra of own === undefined ? ['/usr/local/sbin', '/usr/sbin', '/sbin'] : []) {
    if (!dirs.includes(extra)) dirs.push(extra);
  }
  for (const d of dirs) {
    const p = join(d, name);
    if (isExecutable(p)) return p;
  }
  return null;
}

function isExecutable(p) {
  try {
    if (!statSync(p).isFile()) return false;
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** True when the ELF file has no program interpreter (statically linked). */
function isStaticElf(p) {
  let fd;
  try {
    fd = openSync(p, 'r');
    const h = Buffer.alloc(64);
    if (readSync(fd, h, 0, 64, 0) < 64 || h.readUInt32BE(0) !== 0x7f454c46 || h[4] !== 2) return false;
    const phoff = Number(h.readBigUInt64LE(32));
    const phentsize = h.readUInt16LE(54);
    const phnum = h.readUInt16LE(56);
    const ph = Buffer.alloc(phentsize * phnum);
    readSync(fd, ph, 0, ph.length, phoff);
    for (let i = 0; i < phnum; i++) {
      if (ph.readUInt32LE(i * phentsize) === 3 /* PT_INTERP */) return false;
    }
    return true;
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  return r;
}

function runOk(cmd, args, opts = {}) {
  const r = run(cmd, args, opts);
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed (status ${r.status}):\n${(r.stderr || '').trim()}`);
  }
  return r.stdout;
}

/** The qemu binary ($DMTHIN_VM_QEMU overrides, e.g. /nonexistent to test the skip). */
export function qemuBinary() {
  return which(process.env.DMTHIN_VM_QEMU || 'qemu-system-x86_64');
}

/** A statically linked busybox ($DMTHIN_VM_BUSYBOX overrides), or null. */
function busyboxBinary() {
  if (process.env.DMTHIN_VM_BUSYBOX) return isStaticElf(process.env.DMTHIN_VM_BUSYBOX) ? process.env.DMTHIN_VM_BUSYBOX : null;
  const fixed = process.env.DMTHIN_VM_TOOL_PATH === undefined ? ['/bin/busybox', '/usr/bin/busybox'] : [];
  for (const p of fixed) if (existsSync(p) && isStaticElf(p)) return p;
  const onPath = which('busybox');
  return onPath && isStaticElf(onPath) ? onPath : null;
}

/**
 * Which kernel package to use: $DMTHIN_VM_KERNEL_PKG, else what
 * linux-image-amd64 depends on. Returns null when apt knows nothing.
 */
function kernelPackageName(kernel) {
  if (kernel) return kernel.startsWith('linux-image-') ? kernel : `linux-image-${kernel}`;
  if (process.env.DMTHIN_VM_KERNEL_PKG) return process.env.DMTHIN_VM_KERNEL_PKG;
  if (!which('apt-cache')) return null;
  // apt-cache takes ~1.5 s; remember its answer until the apt lists change.
  const memo = join(cacheDir(), 'kernel-package.json');
  let lists = '';
  try {
    lists = String(statSync('/var/lib/apt/lists').mtimeMs);
    const m = JSON.parse(readFileSync(memo, 'utf8'));
    if (m.lists === lists && m.pkg) return m.pkg;
  } catch {
    // no memo yet
  }
  const r = run('apt-cache', ['depends', 'linux-image-amd64']);
  if (r.status !== 0) return null;
  const m = /Depends:\s*(linux-image-\d[^\s<>]*)/.exec(r.stdout);
  if (!m) return null;
  try {
    mkdirSync(cacheDir(), { recursive: true });
    writeFileSync(memo, JSON.stringify({ lists, pkg: m[1] }) + '\n');
  } catch {
    // read-only cache: fine
  }
  return m[1];
}

function hashOf(...parts) {
  const h = createHash('sha256');
  for (const p of parts) h.update(typeof p === 'string' || Buffer.isBuffer(p) ? p : JSON.stringify(p)).update('\0');
  return h.digest('hex').slice(0, 16);
}

/**
 * Checks the host tools. Returns what is missing, as { what, pkg?, hint? }
 * (empty when the VM can run, as far as can be told without downloading).
 */
export function checkPrerequisites() {
  const problems = [];
  if (!qemuBinary()) {
    problems.push(
      process.env.DMTHIN_VM_QEMU
        ? { what: `qemu not found (DMTHIN_VM_QEMU=${process.env.DMTHIN_VM_QEMU})`, pkg: 'qemu-system-x86' }
        : { what: 'qemu-system-x86_64 not found', pkg: 'qemu-system-x86' },
    );
  }
  if (!busyboxBinary()) {
    problems.push({ what: process.env.DMTHIN_VM_BUSYBOX ? `DMTHIN_VM_BUSYBOX=${process.env.DMTHIN_VM_BUSYBOX} is not a statically linked busybox` : 'no statically linked busybox', pkg: 'busybox-static' });
  }
  if (!which('cpio')) problems.push({ what: 'cpio not found', pkg: 'cpio' });
  if (!which('gzip')) problems.push({ what: 'gzip not found', pkg: 'gzip' });
  if (!which('modprobe') || !which('depmod')) problems.push({ what: 'modprobe/depmod not found', pkg: 'kmod' });
  if (!process.env.DMTHIN_VM_KERNEL_DIR && !which('dpkg-deb')) {
    problems.push({ what: 'dpkg-deb not found', hint: 'the kernel package is fetched with apt-get and unpacked with dpkg-deb (Debian, Ubuntu); elsewhere set DMTHIN_VM_KERNEL_DIR to an unpacked kernel (boot/vmlinuz-VER and lib/modules/VER)' });
  }
  return problems;
}

/**
 * Makes sure the kernel and initramfs are built; returns
 * { kernel, initrd, version, modules }. Throws VmUnavailableError when a
 * prerequisite is missing (tools, or the kernel package cannot be had).
 * `kernel`: a kernel version (`6.1.0-57-amd64`) or package name
 * (`linux-image-6.1.0-57-amd64`); default $DMTHIN_VM_KERNEL_PKG, else what
 * linux-image-amd64 depends on.
 */
export function prepareAssets({ log = (m) => process.stderr.write(`[vm] ${m}\n`), kernel } = {}) {
  const problems = checkPrerequisites();
  if (problems.length) throw new VmUnavailableError(problems);

  const cache = cacheDir();
  mkdirSync(cache, { recursive: true });
  const busybox = busyboxBinary();
  const bbStat = statSync(busybox);
  const wanted = { required: REQUIRED_MODULES, optional: OPTIONAL_MODULES };
  const initText = readFileSync(INIT_SCRIPT);
  const self = readFileSync(fileURLToPath(import.meta.url));
  const key = (version) =>
    hashOf(String(ASSETS_FORMAT), self, version, initText, wanted, `${busybox}:${bbStat.size}:${bbStat.mtimeMs}`);

  // 1. Which kernel, and is it already built?
  const kernelDir = process.env.DMTHIN_VM_KERNEL_DIR; // a root holding boot/ and lib/modules/
  let pkg = null;
  let version;
  if (kernelDir && !kernel) {
    version = process.env.DMTHIN_VM_KERNEL_VERSION || findVersion(kernelDir);
    if (!version) throw new VmUnavailableError([{ what: `no boot/vmlinuz-* with matching lib/modules/ under DMTHIN_VM_KERNEL_DIR=${kernelDir}`, hint: 'point DMTHIN_VM_KERNEL_DIR at an unpacked kernel package' }]);
  } else {
    pkg = kernelPackageName(kernel);
    if (pkg) {
      version = pkg.replace(/^linux-image-/, '').replace(/-unsigned$/, '');
    } else {
      // apt has no lists (offline, or no apt-get update yet): reuse the newest cached build.
      const cached = readdirSync(cache).filter((n) => n.startsWith('kernel-') && existsSync(join(cache, n, 'vmlinuz'))).sort();
      if (!cached.length) {
        throw new VmUnavailableError([
          { what: `cannot tell which kernel package to download (\`apt-cache depends linux-image-amd64\` found nothing) and no kernel is cached in ${cache}`, hint: 'run apt-get update, or name a kernel (--kernel VER, DMTHIN_VM_KERNEL_PKG)' },
        ]);
      }
      version = cached[cached.length - 1].replace(/^kernel-/, '').replace(/-[0-9a-f]{16}$/, '');
      pkg = `linux-image-${version}`; // a rebuild can still use the cached .deb
    }
  }
  const outDir = join(cache, `kernel-${version}-${key(version)}`);
  const kernelPath = join(outDir, 'vmlinuz');
  const initrdPath = join(outDir, 'initramfs.cpio.gz');
  if (existsSync(kernelPath) && existsSync(initrdPath)) {
    touch(outDir);
    return { kernel: bootImage(outDir), initrd: initrdPath, version, modules: readModuleInfo(outDir) };
  }

  // 2. Get the kernel tree (download + unpack, unless given one).
  const t0 = Date.now();
  const work = join(cache, `work-${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  try {
    let base;
    if (kernelDir && !kernel) {
      base = kernelDir;
    } else {
      const debDir = join(cache, 'debs');
      mkdirSync(debDir, { recursive: true });
      let deb = findDeb(debDir, pkg);
      if (!deb) {
        log(`downloading ${pkg} with apt-get download ...`);
        const r = run('apt-get', ['download', '-qq', pkg], { cwd: debDir });
        deb = findDeb(debDir, pkg);
        if (!deb) {
          const why = (r.stderr || '').trim().split('\n').filter((l) => l && !/unsandboxed/.test(l)).join(' | ');
          throw new VmUnavailableError([
            {
              what: `the kernel package ${pkg} could not be downloaded (apt-get download: ${why || `status ${r.status}`})`,
              hint: `check the name (apt-cache search --names-only '^linux-image-[0-9]'), run apt-get update, or pick another kernel with --kernel VER`,
            },
          ]);
        }
      }
      log(`unpacking ${basename(deb)} ...`);
      base = join(work, 'kernel');
      mkdirSync(base);
      runOk('dpkg-deb', ['-x', deb, base]);
    }
    const modRoot = ['lib/modules', 'usr/lib/modules'].map((d) => join(base, d)).find((d) => existsSync(join(d, version)));
    const vmlinuz = join(base, 'boot', `vmlinuz-${version}`);
    if (!modRoot || !existsSync(vmlinuz)) {
      throw new VmUnavailableError([{ what: `kernel ${version}: boot/vmlinuz-${version} or lib/modules/${version} missing in ${base}`, hint: 'give a kernel package or an unpacked kernel that has both' }]);
    }
    const modBase = dirname(dirname(modRoot)); // the folder that holds lib/modules
    if (!existsSync(join(modRoot, version, 'modules.dep'))) {
      if (kernelDir && !kernel) throw new VmUnavailableError([{ what: `${join(modRoot, version)} has no modules.dep`, hint: `run depmod -b ${modBase} ${version}` }]);
      runOk('depmod', ['-b', modBase, version]);
    }

    // 3. Module load order.
    const order = [];
    const files = new Map();
    const present = [];
    for (const mod of [...REQUIRED_MODULES, ...OPTIONAL_MODULES]) {
      const r = run('modprobe', ['-d', modBase, '-S', version, '--show-depends', mod]);
      if (r.status !== 0) {
        if (REQUIRED_MODULES.includes(mod)) {
          throw new VmUnavailableError([{ what: `kernel ${version} has no module ${mod} (${r.stderr.trim()})`, hint: 'use a kernel built with device-mapper thin provisioning, loop, 9p and virtio as modules (Debian\'s are)' }]);
        }
        continue;
      }
      present.push(mod);
      for (const line of r.stdout.split('\n')) {
        const m = /^insmod\s+(\S+)/.exec(line);
        if (!m) continue; // "builtin foo" lines need nothing
        const name = basename(m[1]).replace(/\.ko(\.(xz|zst|gz))?$/, '');
        if (!files.has(name)) {
          files.set(name, m[1]);
          order.push(name);
        }
      }
    }

    // 4. Stage and pack the initramfs.
    const stage = join(work, 'initramfs');
    for (const d of ['bin', 'dev', 'proc', 'sys', 'host', 'modules']) mkdirSync(join(stage, d), { recursive: true });
    copyFileSync(busybox, join(stage, 'bin', 'busybox'));
    chmodSync(join(stage, 'bin', 'busybox'), 0o755);
    writeFileSync(join(stage, 'init'), initText, { mode: 0o755 });
    for (const name of order) {
      const src = files.get(name);
      const dst = join(stage, 'modules', `${name}.ko`);
      if (src.endsWith('.ko')) copyFileSync(src, dst);
      else writeFileSync(dst, runOk(src.endsWith('.zst') ? 'zstd' : src.endsWith('.xz') ? 'xz' : 'gzip', ['-dc', src], { encoding: 'buffer' }));
    }
    writeFileSync(join(stage, 'modules', 'order'), order.join('\n') + '\n');
    // Names that may fail to load without harm (CPU-specific crc32c, extras).
    const optional = order.filter((n) => /intel|aesni|pclmul|avx/.test(n) || OPTIONAL_MODULES.map((m) => m.replace(/_/g, '-')).includes(n.replace(/_/g, '-')));
    writeFileSync(join(stage, 'modules', 'optional'), optional.join(' ') + '\n');
    // The kernel's built-in initramfs normally provides /dev/console; add it when we can.
    run('mknod', ['-m', '600', join(stage, 'dev', 'console'), 'c', '5', '1']);

    const tmpOut = join(work, 'out');
    mkdirSync(tmpOut);
    copyFileSync(vmlinuz, join(tmpOut, 'vmlinuz'));
    const config = join(base, 'boot', `config-${version}`);
    if (existsSync(config) && /^CONFIG_PVH=y$/m.test(readFileSync(config, 'utf8'))) {
      const t1 = Date.now();
      if (extractVmlinux(vmlinuz, join(tmpOut, 'vmlinux'))) {
        log(`unpacked the uncompressed kernel for direct (PVH) boot in ${((Date.now() - t1) / 1000).toFixed(1)} s`);
      }
    }
    const r = spawnSync('sh', ['-c', 'find . -print | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9n > "$1"', 'sh', join(tmpOut, 'initramfs.cpio.gz')], { cwd: stage, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`packing the initramfs failed: ${r.stderr}`);
    writeFileSync(join(tmpOut, 'modules.json'), JSON.stringify({ version, order, present }, null, 1) + '\n');
    rmSync(outDir, { recursive: true, force: true });
    renameSync(tmpOut, outDir);
    // Drop other builds of the same kernel (other init.sh / module-list
    // hashes) unused for a day. Not at once: a per-user cache is shared by
    // projects that may use different dmthin versions, and each would
    // otherwise delete the other's build, perhaps while it boots.
    for (const n of readdirSync(cache)) {
      const p = join(cache, n);
      if (n.startsWith(`kernel-${version}-`) && p !== outDir && Date.now() - statSync(p).mtimeMs > 86_400_000) {
        rmSync(p, { recursive: true, force: true });
      }
    }
    log(`built kernel ${version} initramfs (${(statSync(initrdPath).size / 1048576).toFixed(1)} MiB, ${order.length} modules) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    return { kernel: bootImage(outDir), initrd: initrdPath, version, modules: { order, present } };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Marks a build as in use (its age decides when other runs may prune it). */
function touch(dir) {
  try {
    const now = new Date();
    utimesSync(dir, now, now);
  } catch {
    // a read-only cache: fine
  }
}

function readModuleInfo(dir) {
  try {
    return JSON.parse(readFileSync(join(dir, 'modules.json'), 'utf8'));
  } catch {
    return null;
  }
}

function findDeb(dir, pkg) {
  const debs = readdirSync(dir).filter((n) => n.startsWith(`${pkg}_`) && n.endsWith('.deb')).sort();
  return debs.length ? join(dir, debs[debs.length - 1]) : null;
}

function findVersion(root) {
  const boot = join(root, 'boot');
  if (!existsSync(boot)) return null;
  const versions = readdirSync(boot)
    .filter((n) => n.startsWith('vmlinuz-'))
    .map((n) => n.slice('vmlinuz-'.length))
    .filter((v) => ['lib/modules', 'usr/lib/modules'].some((d) => existsSync(join(root, d, v, 'kernel/drivers/md'))))
    .sort();
  return versions.length ? versions[versions.length - 1] : null;
}

/**
 * The image qemu boots: the uncompressed ELF vmlinux when we have one (qemu
 * starts it through its PVH entry point, which skips decompressing an
 * xz-packed bzImage under emulation: about 8 s less per boot), else the bzImage.
 * DMTHIN_VM_BZIMAGE=1 forces the bzImage.
 */
function bootImage(dir) {
  const elf = join(dir, 'vmlinux');
  return existsSync(elf) && process.env.DMTHIN_VM_BZIMAGE !== '1' ? elf : join(dir, 'vmlinuz');
}

/** Finds the compressed payload in a bzImage and unpacks it; true on success. */
function extractVmlinux(bzImage, dest) {
  const img = readFileSync(bzImage);
  const formats = [
    { magic: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), tool: 'xz', args: ['-dc', '--single-stream'] },
    { magic: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), tool: 'zstd', args: ['-dc'] },
    { magic: Buffer.from([0x1f, 0x8b, 0x08]), tool: 'gzip', args: ['-dc'] },
  ];
  for (const f of formats) {
    if (!which(f.tool)) continue;
    for (let at = img.indexOf(f.magic); at >= 0; at = img.indexOf(f.magic, at + 1)) {
      const r = spawnSync(f.tool, f.args, { input: img.subarray(at), maxBuffer: 512 << 20 });
      const out = r.stdout;
      // Trailing bytes after the stream make some tools exit non-zero; the ELF check decides.
      if (out && out.length > 1 << 20 && out.readUInt32BE(0) === 0x7f454c46) {
        writeFileSync(dest, out);
        return true;
      }
    }
  }
  return false;
}
