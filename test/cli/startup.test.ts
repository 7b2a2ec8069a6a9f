/**
 * CLI start-up (src/cli/startup.ts): the V8 code cache must never change
 * what a command does, whatever state its file is in, and a command on a
 * metadata file must not load what only other work needs (commander's
 * child_process, the dm and pool layers, the delta walker).
 */
import { spawn, spawnSync } from 'node:child_process';
import { chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve as resolvePath } from 'node:path';
import { Script } from 'node:vm';
import { CLI } from './run-cli';
import { native } from '../../src/native/binding';

const DIST = join(__dirname, '..', '..', 'dist');
// A cache of this file's own (DMTHIN_CODE_CACHE_DIR): other test files run the CLI meanwhile.
const CACHE_DIR = mkdtempSync(join(tmpdir(), 'dmthin-code-cache-test-'));
// One file per command (its first argument), "main" for help and the like.
const cacheFile = (group: string) => join(CACHE_DIR, `v8-${process.version}-${process.arch}-${group}.bin`);
afterAll(() => rmSync(CACHE_DIR, { recursive: true, force: true }));
const POOL = join(__dirname, '..', '..', 'examples', 'pool.bin');
const pick = (r: { status: number | null; stdout: string; stderr: string }) => ({ status: r.status, stdout: r.stdout, stderr: r.stderr });

function run(args: string[], env: NodeJS.ProcessEnv = {}, pre: string[] = []) {
  const r = spawnSync(process.execPath, [...pre, CLI, ...args], {
    encoding: 'utf8',
    // No NODE_OPTIONS of the caller's: they name the cache file (see startup.ts).
    env: { ...process.env, NODE_OPTIONS: '', DMTHIN_CODE_CACHE_DIR: CACHE_DIR, ...env },
    timeout: 60_000,
  });
  if (r.error) throw r.error;
  return r;
}

// The module pack beside it (one per command group too).
const packFile = (group: string) => join(CACHE_DIR, `v8-${process.version}-${process.arch}-${group}.pack`);
interface PackHeader {
  e: { f: string; s: number; m: number; o: number; n: number }[];
  c: string;
  n: number;
  k: number;
}
/** A pack's header and the sizes of its parts, or throws when it is not a well-formed pack. */
function packOf(group: string): { header: PackHeader; headerBytes: number; source: Buffer; cacheBytes: number } {
  const b = readFileSync(packFile(group));
  const len = b.readUInt32LE(0);
  const header = JSON.parse(b.toString('utf8', 4, 4 + len)) as PackHeader;
  expect(4 + len + header.n).toBeLessThanOrEqual(b.length);
  const source = b.subarray(4 + len, 4 + len + header.n);
  for (const e of header.e) expect(e.o + e.n).toBeLessThanOrEqual(header.n);
  // One byte a character for V8 (see asciiSource).
  expect(source.every((x) => x < 0x80)).toBe(true);
  return { header, headerBytes: 4 + len, source, cacheBytes: b.length - 4 - len - header.n };
}
/** CRC-32C of the parts in order, as start-up checks a pack (k) and a cache file's entries. */
function crcOf(...parts: Buffer[]): number {
  let c = 0xffffffff;
  for (const p of parts) c = native().crc32c(p, c, true);
  return ~c >>> 0;
}
/** A pack or cache file as start-up reads one: u32 length of the JSON, the JSON, then the bytes. */
function writeIndexed(file: string, json: Buffer, ...rest: Buffer[]): void {
  const head = Buffer.alloc(4);
  head.writeUInt32LE(json.length);
  writeFileSync(file, Buffer.concat([head, json, ...rest]));
}
function writePack(group: string, header: PackHeader, source: Buffer, cache: Buffer): void {
  writeIndexed(packFile(group), Buffer.from(JSON.stringify({ ...header, k: crcOf(source, cache) })), source, cache);
}

/** A cache file's index, or throws when it is not a well-formed cache. */
function index(group: string): { f: string; s: number; m: number; o: number; n: number }[] {
  const b = readFileSync(cacheFile(group));
  const len = b.readUInt32LE(0);
  const entries = JSON.parse(b.toString('utf8', 4, 4 + len)) as { f: string; s: number; m: number; o: number; n: number }[];
  for (const e of entries) expect(e.o + e.n).toBeLessThanOrEqual(b.length - 4 - len);
  return entries;
}

describe('code cache', () => {
  const commands = [
    ['ls', POOL],
    ['dump', POOL],
    ['delta', '--snap1', '1', '--snap2', '2', POOL],
    ['rmap', '--region', '0..1000', POOL],
    ['check', POOL],
    ['send', '--help'],
  ];
  const plain = new Map(commands.map((c) => [c.join(' '), run(c, { DMTHIN_CODE_CACHE: '0' })]));

  const groups = [...new Set(commands.map((c) => c[0]))];

  it('gives the same output and status as a run without it, from no cache, a fresh one and a damaged one (the code cache and the module pack)', () => {
    for (const g of groups) rmSync(cacheFile(g), { force: true });
    for (const g of groups) rmSync(packFile(g), { force: true });
    for (const state of ['none', 'fresh (pack without its code cache)', 'fresh', 'garbage', 'bad bytes', 'stale entries']) {
      for (const g of groups) {
        if (state === 'garbage') {
          writeFileSync(cacheFile(g), Buffer.from('\x10\x00\x00\x00{"not": "an index"}\x00\x01\x02'));
          writeFileSync(packFile(g), Buffer.from('\x10\x00\x00\x00{"not": "a pack"}\x00\x01\x02'));
        }
        if (state === 'bad bytes') {
          // A well-formed index whose entries match the modules but whose bytes are not V8's.
          const entries = index(g).map((e) => ({ ...e, o: 0, n: 64, k: crcOf(Buffer.alloc(64, 0xa5)) }));
          const json = Buffer.from(JSON.stringify(entries));
          writeIndexed(cacheFile(g), json, Buffer.alloc(64, 0xa5));
          // The pack's source whole, its code cache not V8's.
          const p = packOf(g);
          writePack(g, p.header, p.source, Buffer.alloc(4096, 0xa5));
        }
        if (state === 'stale entries') {
          // Files changed since they were packed (their times): read from disk, not from the pack.
          const p = packOf(g);
          writePack(g, { ...p.header, e: p.header.e.map((e, i) => (i % 2 === 0 ? { ...e, m: e.m - 1000 } : e)) }, p.source, Buffer.alloc(0));
        }
      }
      for (const c of commands) {
        const want = plain.get(c.join(' '))!;
        const got = run(c);
        expect({ state, c, status: got.status, stdout: got.stdout, stderr: got.stderr }).toEqual({ state, c, status: want.status, stdout: want.stdout, stderr: want.stderr });
      }
      // Every run that missed rewrote its command's files: well-formed again, naming the modules it
      // compiled (commander's too), and no other command's.
      for (const files of [index('ls').map((e) => e.f), packOf('ls').header.e.map((e) => e.f)]) {
        expect(files).toEqual(expect.arrayContaining([join(DIST, 'cli', 'ls.js'), join(DIST, 'thin', 'ls.js'), expect.stringMatching(/[\\/]commander[\\/]lib[\\/]command\.js$/)]));
        expect(files).not.toContain(join(DIST, 'thin', 'dump.js'));
      }
      expect(index('dump').map((e) => e.f)).toEqual(expect.arrayContaining([join(DIST, 'thin', 'dump.js')]));
      expect(packOf('dump').header.e.map((e) => e.f)).toEqual(expect.arrayContaining([join(DIST, 'thin', 'dump.js')]));
      // A pack made by a run that missed has no code cache yet; the next run adds it, then it stays.
      if (state === 'none') expect(packOf('ls').cacheBytes).toBe(0);
      if (state === 'fresh (pack without its code cache)') expect(packOf('ls').cacheBytes).toBeGreaterThan(0);
    }
  });

  it("a pack or cache file changed in place at its own length (a byte of its source or of V8's code cache) is not used: the output is right at once, and the file is made again (V8 checks neither; before, ls --json failed at every run, or ran wrong code)", () => {
    const cmds = [['ls', '--json', POOL], ['ls', POOL]];
    const want = cmds.map((c) => run(c, { DMTHIN_CODE_CACHE: '0' }));
    const settle = () => {
      for (let i = 0; i < 3; i++) for (const c of cmds) run(c);
    };
    rmSync(packFile('ls'), { force: true });
    settle();
    const good = readFileSync(packFile('ls'));
    const p = packOf('ls');
    expect(p.cacheBytes).toBeGreaterThan(0);
    const src = p.source.toString('latin1');
    // In code ls --json runs and ls does not (compiled from the source when first called), and across the code cache.
    const inCode = src.indexOf('const ', src.indexOf('function writeLsJson')) + 1;
    expect(inCode).toBeGreaterThan(0);
    const offsets = [inCode, ...[0.05, 0.2, 0.4, 0.6, 0.8, 0.95].map((f) => p.source.length + Math.floor(f * p.cacheBytes))];
    for (const off of offsets) {
      const b = Buffer.from(good);
      b[p.headerBytes + off] ^= 0x5a;
      writeFileSync(packFile('ls'), b);
      cmds.forEach((c, i) => expect({ off, c, ...pick(run(c)) }).toEqual({ off, c, ...pick(want[i]) }));
      settle();
      // Made again: its bytes are what its header says.
      const again = readFileSync(packFile('ls'));
      const q = packOf('ls');
      expect(crcOf(again.subarray(q.headerBytes))).toBe(q.header.k);
    }
    // The cache file (modules compiled on their own, here with no pack): an entry's bytes changed.
    rmSync(packFile('ls'));
    const bin = readFileSync(cacheFile('ls'));
    const len = bin.readUInt32LE(0);
    const e = index('ls').find((x) => x.f.endsWith(join('thin', 'ls.js')))!;
    bin[4 + len + e.o + Math.floor(e.n / 2)] ^= 0x5a;
    writeFileSync(cacheFile('ls'), bin);
    cmds.forEach((c, i) => expect(pick(run(c))).toEqual(pick(want[i])));
  });

  /** A copy of the package (dist/ and a cache of its own), so that a file can be changed; `ls --help` runs it. */
  function packageCopy(): { root: string; cli: () => string; pack: string } {
    const root = mkdtempSync(join(tmpdir(), 'dmthin-pack-'));
    cpSync(DIST, join(root, 'dist'), { recursive: true, filter: (src) => !src.includes('.code-cache') });
    cpSync(join(__dirname, '..', '..', 'package.json'), join(root, 'package.json'));
    symlinkSync(join(__dirname, '..', '..', 'node_modules'), join(root, 'node_modules'));
    symlinkSync(join(__dirname, '..', '..', 'build'), join(root, 'build'));
    const cacheDir = join(root, 'cache');
    const cli = () => {
      const r = spawnSync(process.execPath, [join(root, 'dist', 'cli', 'main.js'), 'ls', '--help'], {
        encoding: 'utf8',
        env: { ...process.env, NODE_OPTIONS: '', DMTHIN_CODE_CACHE_DIR: cacheDir },
        timeout: 60_000,
      });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      return r.stdout;
    };
    return { root, cli, pack: join(cacheDir, `v8-${process.version}-${process.arch}-ls.pack`) };
  }

  it('a file that cannot be packed (a backslash before a non-ASCII character) is loaded on its own, and the pack is not made again each run', () => {
    const { root, cli, pack } = packageCopy();
    try {
      const lsJs = join(root, 'dist', 'cli', 'ls.js');
      writeFileSync(lsJs, readFileSync(lsJs, 'utf8') + "\nvoid '\\\u00e9';\n");
      const out = cli();
      cli();
      expect(readFileSync(pack, 'latin1')).not.toContain(JSON.stringify(lsJs));
      expect(readFileSync(pack, 'latin1')).toContain(JSON.stringify(join(root, 'dist', 'thin', 'ls-fields.js')));
      const made = statSync(pack).mtimeMs;
      expect(cli()).toBe(out);
      expect(statSync(pack).mtimeMs).toBe(made);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("a pack's code cache made by a run whose action never ran (--help) is made again by the first run of the command itself, then left alone (the bench's first run of a group was its --help: every later send compiled its own functions from the source)", () => {
    const { root } = packageCopy();
    const cacheDir = join(root, 'cache');
    const ls = (args: string[]) => pick(spawnSync(process.execPath, [join(root, 'dist', 'cli', 'main.js'), 'ls', ...args], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '', DMTHIN_CODE_CACHE_DIR: cacheDir }, timeout: 60_000 }));
    const file = join(cacheDir, `v8-${process.version}-${process.arch}-ls.pack`);
    const header = () => {
      const b = readFileSync(file);
      return { ...(JSON.parse(b.toString('utf8', 4, 4 + b.readUInt32LE(0))) as PackHeader & { a?: boolean }), size: b.length, mtime: statSync(file).mtimeMs };
    };
    try {
      const want = ls([POOL]);
      // The bench's order: the command (its pack made, no code cache yet), then its --help (the code cache added).
      rmSync(file);
      expect(ls([POOL])).toEqual(want);
      expect(ls(['--help']).status).toBe(0);
      const help = header();
      expect(help.a).toBe(false);
      expect(ls([POOL])).toEqual(want);
      const first = header();
      expect(first.a).toBe(true);
      expect(first.size).toBeGreaterThan(help.size); // more compiled code in its cache
      expect(first.n).toBe(help.n); // the same source
      for (let i = 0; i < 2; i++) {
        expect(ls([POOL])).toEqual(want);
        expect(ls(['--help']).status).toBe(0);
      }
      expect(header().mtime).toBe(first.mtime);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("a damaged entry of the cache file is not signed anew by a run that did not use it (a review: a run of 'dump --help' gave it a fresh CRC, and every later dump without its pack crashed, SIGSEGV)", () => {
    const { root } = packageCopy();
    const cacheDir = join(root, 'cache');
    const dump = (args: string[], env: NodeJS.ProcessEnv = {}) =>
      pick(spawnSync(process.execPath, [join(root, 'dist', 'cli', 'main.js'), 'dump', ...args], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '', DMTHIN_CODE_CACHE_DIR: cacheDir, ...env }, timeout: 60_000 }));
    try {
      const want = dump([POOL], { DMTHIN_CODE_CACHE: '0' });
      for (let i = 0; i < 3; i++) expect(dump([POOL])).toEqual(want);
      const binFile = join(cacheDir, `v8-${process.version}-${process.arch}-dump.bin`);
      const bin = readFileSync(binFile);
      const len = bin.readUInt32LE(0);
      const entries = JSON.parse(bin.toString('utf8', 4, 4 + len)) as { f: string; o: number; n: number }[];
      const md = join(root, 'dist', 'thin', 'metadata.js');
      const e = entries.find((x) => x.f === md)!;
      expect(e).toBeDefined();
      bin[4 + len + e.o + Math.floor(e.n * 0.7)] ^= 0x5a;
      writeFileSync(binFile, bin);
      // A run of the group that loads dump.js from its file (its change time is new) and not metadata.js: it saves the cache file.
      const dumpJs = join(root, 'dist', 'cli', 'dump.js');
      utimesSync(dumpJs, statSync(dumpJs).atime, statSync(dumpJs).mtime);
      expect(dump(['--help']).status).toBe(0);
      const after = readFileSync(binFile);
      const kept = (JSON.parse(after.toString('utf8', 4, 4 + after.readUInt32LE(0))) as { f: string }[]).map((x) => x.f);
      expect(kept).not.toContain(md);
      // Without the pack, the modules come from the cache file.
      rmSync(join(cacheDir, `v8-${process.version}-${process.arch}-dump.pack`));
      expect(dump([POOL])).toEqual(want);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('commander is resolved anew every run: a nearer copy that appeared after packing is the one loaded (a review: the pack kept the old one)', () => {
    const { root, cli } = packageCopy();
    try {
      const before = cli();
      cli();
      expect(before).toContain('Usage: dmthin ls');
      // A commander nearer to dist/cli than node_modules/ (npm nesting it under the package, say).
      const nearer = join(root, 'dist', 'node_modules', 'commander');
      cpSync(join(__dirname, '..', '..', 'node_modules', 'commander'), nearer, { recursive: true, dereference: true });
      const help = join(nearer, 'lib', 'help.js');
      writeFileSync(help, readFileSync(help, 'utf8').replace(/Usage:/g, 'USAGE:'));
      expect(cli()).toBe(before.replace('Usage:', 'USAGE:'));
      expect(cli()).toBe(before.replace('Usage:', 'USAGE:'));
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  (process.getuid?.() === 0 ? it : it.skip)("a pack or code cache another user owns is not run (it is code: a shared cache directory would run another user's)", () => {
    const { root, cli, pack } = packageCopy();
    try {
      const before = cli();
      cli();
      const b = readFileSync(pack);
      const i = b.indexOf('omit the header line');
      expect(i).toBeGreaterThan(0);
      b.write('OMIT THE HEADER LINE', i, 'latin1');
      writeFileSync(pack, b);
      chownSync(pack, 65534, 65534);
      expect(cli()).toBe(before);
      // Ours again, as written by that run, it holds the file's own text.
      expect(statSync(pack).uid).toBe(0);
      expect(readFileSync(pack, 'latin1')).not.toContain('OMIT THE HEADER LINE');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('a file changed since it was packed runs as it is now, and the next pack holds the new source', () => {
    const { root, cli, pack } = packageCopy();
    try {
      const before = cli();
      cli();
      const lsJs = join(root, 'dist', 'cli', 'ls.js');
      expect(readFileSync(pack, 'latin1')).toContain(JSON.stringify(lsJs));
      const src = readFileSync(lsJs, 'utf8');
      expect(src).toContain('omit the header line');
      writeFileSync(lsJs, src.replace('omit the header line', 'OMIT THE HEADER LINE'));
      const after = cli();
      expect(after).toBe(before.replace('omit the header line', 'OMIT THE HEADER LINE'));
      expect(cli()).toBe(after);
      expect(readFileSync(pack, 'latin1')).toContain('OMIT THE HEADER LINE');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('a file rewritten with its old size and modification time runs as it is now (outside hunt U: freshness was size and mtime; a copy or tar extraction sets those back)', () => {
    const { root, cli } = packageCopy();
    try {
      const before = cli();
      cli();
      const lsJs = join(root, 'dist', 'cli', 'ls.js');
      const st = statSync(lsJs);
      const src = readFileSync(lsJs, 'utf8');
      const ref = join(root, 'times');
      expect(spawnSync('cp', ['-p', lsJs, ref]).status).toBe(0);
      writeFileSync(lsJs, src.replace('omit the header line', 'OMIT THE HEADER LINE'));
      // The old modification time to the nanosecond (utimes with a Date keeps milliseconds).
      expect(spawnSync('touch', ['-r', ref, lsJs]).status).toBe(0);
      expect(statSync(lsJs).size).toBe(st.size);
      expect(statSync(lsJs).mtimeMs).toBe(st.mtimeMs);
      expect(cli()).toBe(before.replace('omit the header line', 'OMIT THE HEADER LINE'));
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('a pack made again in part (one file changed, the others kept from the old pack) holds every file at its place: later runs load from it and leave it alone (each entry was a byte further off than the last, the pack did not compile, and every later run wrote it again)', () => {
    const { root, cli, pack } = packageCopy();
    try {
      cli();
      cli();
      const lsJs = join(root, 'dist', 'cli', 'ls.js');
      const src = readFileSync(lsJs, 'utf8');
      writeFileSync(lsJs, src.replace('omit the header line', 'OMIT THE HEADER LINE'));
      const after = cli(); // the changed file is missed: the pack is made again from the old one's entries and it
      cli(); // the code cache of that pack
      const b = readFileSync(pack);
      const len = b.readUInt32LE(0);
      const header = JSON.parse(b.toString('utf8', 4, 4 + len)) as PackHeader;
      const source = b.subarray(4 + len, 4 + len + header.n);
      expect(header.e.length).toBeGreaterThan(10);
      expect(() => new Script(source.toString('latin1'))).not.toThrow();
      // Each entry is its file's text (these files are ASCII, as the pack holds them).
      for (const e of header.e) {
        const text = readFileSync(e.f);
        if (text.every((x) => x < 0x80) && !text.subarray(0, 2).equals(Buffer.from('#!'))) expect([e.f, source.subarray(e.o, e.o + e.n).toString('latin1')]).toEqual([e.f, text.toString('latin1')]);
      }
      const made = statSync(pack).mtimeMs;
      expect(cli()).toBe(after);
      expect(cli()).toBe(after);
      expect(statSync(pack).mtimeMs).toBe(made);

      // A pack an earlier version wrote, its offsets a byte further off each
      // entry: made again in part, it keeps none of those entries garbled.
      header.e = header.e.map((e, i) => ({ ...e, o: e.o - i }));
      const json = Buffer.from(JSON.stringify(header));
      writeIndexed(pack, json, source, b.subarray(4 + len + header.n));
      writeFileSync(lsJs, src);
      const before = cli();
      expect(before).toBe(after.replace('OMIT THE HEADER LINE', 'omit the header line'));
      cli();
      const healed = readFileSync(pack);
      const hLen = healed.readUInt32LE(0);
      const hHeader = JSON.parse(healed.toString('utf8', 4, 4 + hLen)) as PackHeader;
      expect(() => new Script(healed.toString('latin1', 4 + hLen, 4 + hLen + hHeader.n))).not.toThrow();
      const again = statSync(pack).mtimeMs;
      expect(cli()).toBe(before);
      expect(statSync(pack).mtimeMs).toBe(again);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("a save removes the temporary files a killed run left (a minute old), not another run's fresh one (outside hunt T: they were never removed)", () => {
    const old = new Date(Date.now() - 5 * 60_000);
    const left = [`${cacheFile('ls')}.999991.tmp`, `${packFile('ls')}.999992.tmp`];
    const fresh = `${cacheFile('ls')}.999993.tmp`;
    for (const f of [...left, fresh]) writeFileSync(f, 'partial');
    for (const f of left) utimesSync(f, old, old);
    rmSync(cacheFile('ls'), { force: true });
    rmSync(packFile('ls'), { force: true });
    expect(run(['ls', POOL]).status).toBe(0);
    expect(left.filter((f) => existsSync(f))).toEqual([]);
    expect(existsSync(fresh)).toBe(true);
    rmSync(fresh);
  });

  it("a save removes the group's files of other Node versions or node options unused for 30 days, and beyond 64 the least recently used (they were never removed; a review: a count of five rewrote the cache at every run of a rotation of seven)", () => {
    const dir = mkdtempSync(join(tmpdir(), 'dmthin-code-cache-others-'));
    try {
      const day = 86_400_000;
      const name = (i: number) => `v8-v20.0.${i}-${process.arch}-${String(i).padStart(8, '0')}-ls.pack`;
      // 0..69: used 0..69 hours ago (all within 30 days: the 64 most recent stay); 100..102: 31, 40, 365 days ago.
      const recent = Array.from({ length: 70 }, (_, i) => i);
      const old = [[100, 31], [101, 40], [102, 365]] as const;
      for (const i of recent) writeFileSync(join(dir, name(i)), 'old pack');
      for (const [i] of old) writeFileSync(join(dir, name(i)), 'old pack');
      for (const i of recent) {
        const t = new Date(Date.now() - i * 3_600_000);
        utimesSync(join(dir, name(i)), t, t);
      }
      for (const [i, days] of old) {
        const t = new Date(Date.now() - days * day);
        utimesSync(join(dir, name(i)), t, t);
      }
      const otherGroup = `v8-v20.0.0-${process.arch}-dump.pack`;
      const otherKind = `v8-v20.0.0-${process.arch}-ls.bin`;
      for (const n of [otherGroup, otherKind]) {
        writeFileSync(join(dir, n), 'x');
        utimesSync(join(dir, n), new Date(0), new Date(0));
      }
      expect(run(['ls', POOL], { DMTHIN_CODE_CACHE_DIR: dir }).status).toBe(0);
      const left = new Set(readdirSync(dir));
      expect(recent.filter((i) => left.has(name(i)))).toEqual(recent.slice(0, 64));
      expect(old.filter(([i]) => left.has(name(i)))).toEqual([]);
      // Another command's file stays; the code cache of ls (another kind) is judged at its own save: unused for 55 years.
      expect(left.has(otherGroup)).toBe(true);
      expect(left.has(otherKind)).toBe(false);
      expect([...left].filter((n) => n.startsWith(`v8-${process.version}-`)).length).toBeGreaterThanOrEqual(1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a rotation of seven node option sets settles: after two rounds no run writes the cache (a review: with five kept, every run rewrote it)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dmthin-code-cache-rotation-'));
    try {
      const opts = Array.from({ length: 7 }, (_, i) => `--max-old-space-size=${900 + i}`);
      for (let round = 0; round < 2; round++) for (const o of opts) expect(run(['ls', POOL], { DMTHIN_CODE_CACHE_DIR: dir, NODE_OPTIONS: o }).status).toBe(0);
      const before = statSync(dir).mtimeMs;
      for (const o of opts) expect(run(['ls', POOL], { DMTHIN_CODE_CACHE_DIR: dir, NODE_OPTIONS: o }).status).toBe(0);
      expect(statSync(dir).mtimeMs).toBe(before);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a cache file an earlier version wrote with its entries unaligned is written again aligned by the next run that reads it (a review: it was used as it was, every entry copied by V8)", () => {
    const want = plain.get(`ls ${POOL}`)!;
    for (let i = 0; i < 3; i++) run(['ls', POOL]);
    const bin = readFileSync(cacheFile('ls'));
    const len = bin.readUInt32LE(0);
    // The same entries one byte further on: a space more after the index (as an unpadded index would leave them).
    let json = Buffer.from(bin.toString('latin1', 4, 4 + len).trimEnd(), 'latin1');
    if ((4 + json.length) % 8 === 0) json = Buffer.concat([json, Buffer.from(' ')]);
    writeIndexed(cacheFile('ls'), json, bin.subarray(4 + len));
    rmSync(packFile('ls')); // so that the run compiles its modules from the cache file
    const got = run(['ls', POOL]);
    expect({ status: got.status, stdout: got.stdout }).toEqual({ status: want.status, stdout: want.stdout });
    const after = readFileSync(cacheFile('ls'));
    const n = after.readUInt32LE(0);
    const entries = JSON.parse(after.toString('utf8', 4, 4 + n)) as { o: number }[];
    expect(entries.length).toBeGreaterThan(0);
    expect([(4 + n) % 8, ...entries.map((e) => e.o % 8)]).toEqual([0, ...entries.map(() => 0)]);
  });

  it('a run of another command, help or a usage error keeps its own file', () => {
    for (const g of ['ls', 'main']) rmSync(cacheFile(g), { force: true });
    expect(run(['--help']).status).toBe(0);
    expect(run(['no-such-command']).status).toBe(1);
    expect(existsSync(cacheFile('main'))).toBe(true);
    expect(existsSync(cacheFile('no-such-command'))).toBe(false);
    expect(existsSync(cacheFile('ls'))).toBe(false);
    // Help's modules (the commands themselves are listed from COMMAND_LIST, not loaded).
    expect(index('main').map((e) => e.f)).toEqual(expect.arrayContaining([join(DIST, 'cli', 'program.js')]));
    expect(index('main').map((e) => e.f)).not.toContain(join(DIST, 'cli', 'ls.js'));
  });

  it("a run with as many full collections as V8 takes to drop a function's bytecode writes no code cache (it would lack what only its start-up ran: a 40M-mapping ls wrote 149 KB where a tiny one wrote 243, and every later run compiled the rest from source); the next short run writes it", () => {
    const dir = mkdtempSync(join(tmpdir(), 'dmthin-gc-cache-'));
    // Preloaded by every run (the same node options, so the same cache files): eight full
    // collections at exit when GC_AT_EXIT is set, before the CLI's own exit listener saves.
    const preload = join(dir, 'gc-at-exit.js');
    writeFileSync(
      preload,
      `require('node:v8').setFlagsFromString('--expose-gc');
const gc = require('node:vm').runInNewContext('gc');
process.on('exit', () => { if (process.env.GC_AT_EXIT) for (let i = 0; i < 8; i++) gc(); });
`,
    );
    const cacheDir = join(dir, 'cache');
    const ls = (gcAtExit: boolean) => pick(run(['ls', POOL], { DMTHIN_CODE_CACHE_DIR: cacheDir, ...(gcAtExit ? { GC_AT_EXIT: '1' } : {}) }, ['-r', preload]));
    const pack = () => {
      const name = readdirSync(cacheDir).filter((f) => f.endsWith('-ls.pack'));
      expect(name).toHaveLength(1);
      const b = readFileSync(join(cacheDir, name[0]));
      const len = b.readUInt32LE(0);
      const h = JSON.parse(b.toString('utf8', 4, 4 + len)) as PackHeader;
      return { cacheBytes: b.length - 4 - len - h.n, bytes: b };
    };
    try {
      const want = pick(run(['ls', POOL], { DMTHIN_CODE_CACHE: '0' }));
      expect(ls(false)).toEqual(want); // the pack made: sources, no code cache yet
      const made = pack();
      expect(made.cacheBytes).toBe(0);
      expect(ls(true)).toEqual(want); // would add the code cache, but its bytecode may be gone
      expect(pack().bytes.equals(made.bytes)).toBe(true);
      expect(ls(false)).toEqual(want); // a short run adds it
      expect(pack().cacheBytes).toBeGreaterThan(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('is not written with DMTHIN_CODE_CACHE=0, and a run that cannot write it still succeeds', () => {
    const CACHE = cacheFile('ls');
    rmSync(CACHE, { force: true });
    expect(run(['ls', POOL], { DMTHIN_CODE_CACHE: '0' }).status).toBe(0);
    expect(existsSync(CACHE)).toBe(false);
    // A directory where the file should be: the rename fails, the command does not.
    mkdirSync(join(CACHE, 'x'), { recursive: true });
    try {
      const r = run(['ls', POOL]);
      expect({ status: r.status, stdout: r.stdout, stderr: r.stderr }).toEqual({
        status: 0,
        stdout: plain.get(`ls ${POOL}`)!.stdout,
        stderr: '',
      });
      expect(statSync(CACHE).isDirectory()).toBe(true);
    } finally {
      rmSync(CACHE, { recursive: true, force: true });
    }
  });
});

describe('the module pack', () => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { asciiSource } = require(join(DIST, 'cli', 'startup.js')) as typeof import('../../src/cli/startup');
  const run = (src: string): unknown => new Function('module', `${src}; return module.exports;`)({ exports: {} });

  it('holds sources in ASCII: other characters as escapes that mean the same (comments, strings, templates, regular expressions, identifiers)', () => {
    const src = [
      '// a comment \u2014 with a dash, § and µ',
      'const \u00e9t\u00e9 = 1;',
      "const étè = 'é';",
      'module.exports = { s: "…≤·", t: `${étè}…`, r: /^[…—]+$/.test("——"), u: /\\u{1F600}/u.test("\\u{1F600}"), n: étè, e: \u00e9t\u00e9 };',
    ].join('\n');
    const out = asciiSource(Buffer.from(src, 'utf8'))!;
    expect(out.every((b: number) => b < 0x80)).toBe(true);
    expect(run(out.toString('latin1'))).toEqual(run(src));
    expect(run(src)).toEqual({ s: '…≤·', t: 'é…', r: true, u: true, n: 'é', e: 1 });
    // ASCII already: the same bytes.
    const plain = Buffer.from('module.exports = 1;\n');
    expect(asciiSource(plain)).toBe(plain);
  });

  it("resolves a packed module's relative requests as path.resolve does, without it (joinRelative)", () => {
    const { joinRelative } = require(join(DIST, 'cli', 'startup.js')) as typeof import('../../src/cli/startup');
    const dirs = ['/', '/a', '/a/b', '/a/b/c/d', '/work/dmthin/dist/cli'];
    const steps = ['', './', '../', '../../', './../', '.././', '../../../../../../'];
    const rests = ['x', 'x.js', 'x/y', 'x/../y', 'x/./y', './x', 'x//y', 'x/', '.', '..', '', '.x', '..x', 'x/.', 'x/..', 'x.../y'];
    let n = 0;
    for (const d of dirs) {
      for (const s of steps) {
        for (const r of rests) {
          const id = s + r;
          if (!id.startsWith('./') && !id.startsWith('../')) continue;
          expect([d, id, joinRelative(d, id)]).toEqual([d, id, resolvePath(d, id)]);
          n++;
        }
      }
    }
    expect(n).toBeGreaterThan(400);
  });

  it('leaves out (undefined) what an escape could change: a backslash before such a character, raw template strings, line terminators, white space and astral characters', () => {
    expect(asciiSource(Buffer.from("module.exports = '\\…';"))).toBeUndefined();
    // U+2028 ends a // comment (a review: escaped, the code after it was commented out); U+00A0 and U+FEFF separate tokens.
    for (const src of ['// note\u2028module.exports = 1;', 'var\u00a0x = 1;', '\ufeffmodule.exports = 1;', 'module.exports = "\u{1F600}";', 'const \u{1D400} = 1;']) {
      expect([src, asciiSource(Buffer.from(src, 'utf8'))]).toEqual([src, undefined]);
    }
    expect(asciiSource(Buffer.from('module.exports = String.raw`…`;'))).toBeUndefined();
    expect(asciiSource(Buffer.from('const f = (s) => s.raw[0]; module.exports = f`…`;'))).toBeUndefined();
  });
});

describe('the module pack read at start-up', () => {
  // Counts the bytes a run reads from .pack files (at exit, with writeSync: see 'modules a command ... loads').
  const dir = mkdtempSync(join(tmpdir(), 'dmthin-pack-read-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const hook = join(dir, 'pack-reads.js');
  writeFileSync(
    hook,
    `const fs = require('fs');
     const packs = new Set();
     let bytes = 0;
     const { openSync, readSync, readFileSync, closeSync } = fs;
     fs.openSync = function (p, ...a) { const fd = openSync.call(this, p, ...a); if (String(p).endsWith('.pack')) packs.add(fd); return fd; };
     fs.closeSync = function (fd) { packs.delete(fd); return closeSync.call(this, fd); };
     fs.readSync = function (fd, ...a) { const n = readSync.call(this, fd, ...a); if (packs.has(fd)) bytes += n; return n; };
     fs.readFileSync = function (f, ...a) { const b = readFileSync.call(this, f, ...a); if (packs.has(f) || String(f).endsWith('.pack')) bytes += b.length; return b; };
     process.on('exit', () => fs.writeSync(2, JSON.stringify({ packBytes: bytes })));`,
  );
  const counted = (args: string[]) => {
    const r = run(args, {}, ['-r', hook]);
    const { packBytes } = JSON.parse(r.stderr.slice(r.stderr.lastIndexOf('{'))) as { packBytes: number };
    return { status: r.status, stdout: r.stdout, packBytes };
  };

  // The pack of this hook's runs: its file name carries a hash of the node options (-r HOOK), see startup.ts.
  const hookPack = (group = 'ls'): string => {
    const names = readdirSync(CACHE_DIR).filter((f) => f.startsWith(`v8-${process.version}-${process.arch}-`) && f.endsWith(`-${group}.pack`));
    const newest = names.map((f) => join(CACHE_DIR, f)).sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
    expect(newest).toMatch(new RegExp(`-[0-9a-f]{8}-${group}\\.pack$`));
    return newest;
  };
  const parts = (file: string) => {
    const b = readFileSync(file);
    const len = b.readUInt32LE(0);
    const header = JSON.parse(b.toString('utf8', 4, 4 + len)) as PackHeader;
    return { b, header, headerBytes: 4 + len, source: b.subarray(4 + len, 4 + len + header.n), cache: b.subarray(4 + len + header.n) };
  };

  it('is mapped from its file (native/file_map.cc), not read: a run reads its header, and its source compiles with its code cache (the pack stays as it is)', () => {
    const want = run(['ls', POOL], { DMTHIN_CODE_CACHE: '0' });
    counted(['ls', POOL]); // makes the pack
    rmSync(hookPack());
    counted(['ls', POOL]); // makes it again
    counted(['ls', POOL]); // adds its code cache
    const file = hookPack();
    const p = parts(file);
    expect(p.cache.length).toBeGreaterThan(0);
    // The source and the code cache start 8-byte aligned (V8 copies cached data that is not, ~70 fresh pages for send's).
    expect([p.headerBytes % 8, p.source.length % 8]).toEqual([0, 0]);
    // So do the cache file's entries.
    const bin = readFileSync(file.replace(/\.pack$/, '.bin'));
    const len = bin.readUInt32LE(0);
    const index = JSON.parse(bin.toString('utf8', 4, 4 + len)) as { o: number }[];
    expect(index.length).toBeGreaterThan(0);
    expect([(4 + len) % 8, ...index.map((e) => e.o % 8)]).toEqual([0, ...index.map(() => 0)]);
    const before = statSync(file).mtimeMs;
    for (let i = 0; i < 2; i++) {
      const got = counted(['ls', POOL]);
      expect({ status: got.status, stdout: got.stdout }).toEqual({ status: want.status, stdout: want.stdout });
      // The header only (4 bytes and its JSON), where a read took the whole file (~600 KB).
      expect(got.packBytes).toBe(p.headerBytes);
    }
    // The code cache was accepted: a rejected one, or a source that did not compile, makes the run write the pack again.
    expect(statSync(file).mtimeMs).toBe(before);
  });

  it('a long-running command (send, receive, replicate, backup...) holds its pack source in memory of its own: the pack cut short and rewritten in place under a receive waiting on its input changes nothing (a mapping would end it with SIGBUS, or change its code: a review)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dmthin-startup-receive-'));
    try {
      const data = join(dir, 'data');
      writeFileSync(data, '');
      truncateSync(data, 1000 * 65536);
      const stream = join(dir, 'stream');
      expect(run(['send', '--metadata', POOL, '--data', data, '--snap', '1', '--size', String(16 << 20), '-q', '-o', stream]).status).toBe(0);
      const want = join(dir, 'want');
      // Twice: the first run makes the receive's pack, the second gives it its code cache.
      for (let i = 0; i < 2; i++) {
        rmSync(want, { force: true });
        expect(run(['receive', '--target', want, '--create', '-q', '-i', stream, '--state', join(dir, 'want.state')])).toMatchObject({ status: 0, stderr: '' });
      }
      const file = packFile('receive');
      const size = statSync(file).size;
      expect(parts(file).cache.length).toBeGreaterThan(0);
      const target = join(dir, 'target');
      const child = spawn(process.execPath, [CLI, 'receive', '--target', target, '--create', '-q', '--state', join(dir, 'target.state')], {
        env: { ...process.env, NODE_OPTIONS: '', DMTHIN_CODE_CACHE_DIR: CACHE_DIR },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
      // Its pack compiled (~0.15 s after start, the addon loaded just before), it waits for its input.
      const maps = `/proc/${child.pid}/maps`;
      for (let i = 0; i < 100 && !(existsSync(maps) && readFileSync(maps, 'utf8').includes('dmthin.node')); i++) await new Promise((r) => setTimeout(r, 50));
      await new Promise((r) => setTimeout(r, 1000));
      truncateSync(file, 0);
      const spaces = Buffer.alloc(size, 0x20);
      writeFileSync(file, spaces, { flag: 'r+' }); // the same file: its pages are spaces now
      child.stdin.on('error', () => undefined); // EPIPE if it died: its status says how
      child.stdin.end(readFileSync(stream));
      expect({ ...(await done), stderr }).toEqual({ code: 0, signal: null, stderr: '' });
      expect(readFileSync(target).equals(readFileSync(want))).toBe(true);
      // It ran from the pack it had read whole: one it found damaged (started late) it would have made again at exit.
      expect(readFileSync(file).equals(spaces)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a pack an earlier version wrote (its source's length not a multiple of 8) is written again aligned, and then used as it is", () => {
    const want = run(['ls', POOL], { DMTHIN_CODE_CACHE: '0' });
    counted(['ls', POOL]);
    counted(['ls', POOL]);
    const file = hookPack();
    const p = parts(file);
    // The source without its padding, one byte more (a newline), the header unpadded: as 4777fe1 wrote it.
    const text = p.source.toString('latin1').trimEnd() + '\n';
    const source = Buffer.from(text.length % 8 === 0 ? text + ' ' : text, 'latin1');
    expect(source.length % 8).not.toBe(0);
    const json = Buffer.from(JSON.stringify({ ...p.header, n: source.length, k: crcOf(source, Buffer.alloc(0)), a: false }));
    writeIndexed(file, json, source);
    for (let i = 0; i < 2; i++) expect(counted(['ls', POOL]).stdout).toBe(want.stdout);
    const q = parts(hookPack());
    expect([q.headerBytes % 8, q.source.length % 8, q.cache.length > 0]).toEqual([0, 0, true]);
    const before = statSync(hookPack()).mtimeMs;
    const got = counted(['ls', POOL]);
    expect({ status: got.status, stdout: got.stdout, packBytes: got.packBytes }).toEqual({ status: want.status, stdout: want.stdout, packBytes: q.headerBytes });
    expect(statSync(hookPack()).mtimeMs).toBe(before);
  });

  it('a pack whose code cache an earlier version left unaligned (its header unpadded; the cache V8 still takes) is written again aligned, once (a review: it was used as it was, and copied by V8, for good)', () => {
    const want = run(['ls', POOL], { DMTHIN_CODE_CACHE: '0' });
    counted(['ls', POOL]);
    counted(['ls', POOL]);
    const file = hookPack();
    const p = parts(file);
    expect(p.cache.length).toBeGreaterThan(0);
    let json = Buffer.from(JSON.stringify(p.header));
    if ((4 + json.length) % 8 === 0) json = Buffer.concat([json, Buffer.from(' ')]);
    writeIndexed(file, json, p.source, p.cache);
    expect((4 + json.length) % 8).not.toBe(0);
    expect(counted(['ls', POOL]).stdout).toBe(want.stdout);
    const q = parts(hookPack());
    expect([q.headerBytes % 8, q.source.length % 8, q.cache.length > 0]).toEqual([0, 0, true]);
    const before = statSync(hookPack()).mtimeMs;
    expect(counted(['ls', POOL]).stdout).toBe(want.stdout);
    expect(statSync(hookPack()).mtimeMs).toBe(before);
  });

  it("a pack whose source is not ASCII (an older version's, or damaged) is read instead, and the command's output is the same", () => {
    const want = run(['ls', POOL], { DMTHIN_CODE_CACHE: '0' });
    counted(['ls', POOL]);
    counted(['ls', POOL]);
    const file = hookPack();
    const p = parts(file);
    // A byte of 0xe9 in the first comment of the source: Latin-1 'é', in UTF-8 not a character at all.
    // Written as such a pack would be, its check (k) over its bytes as they are.
    const source = Buffer.from(p.source);
    const at = source.indexOf('//') + 2;
    expect(at).toBeGreaterThan(1);
    source[at] = 0xe9;
    const json = Buffer.from(JSON.stringify({ ...p.header, k: crcOf(source, p.cache) }));
    writeIndexed(file, json, source, p.cache);
    const got = counted(['ls', POOL]);
    expect({ status: got.status, stdout: got.stdout }).toEqual({ status: want.status, stdout: want.stdout });
    // Its header, then its source read (the code cache stays mapped).
    expect(got.packBytes).toBe(4 + json.length + source.length);
  });
});

describe('a module that uses import()', () => {
  it('is told from one that names import() only in comments', () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { mayImport } = require(join(DIST, 'cli', 'startup.js')) as typeof import('../../src/cli/startup');
    const yes = ["import('x')", "const m = await import('x');", "/* a */ import('x')", " * a */ import('x')", "f(); // import('x')", "`\n${import('x')}`", "/**\n * @type {import('a').A}\n */\nimport('b')"];
    const no = ['', 'const x = 1;', ' * @typedef { import("./command.js").Command } Command', "// import('x')", "  /**\n   * {import('a').B}\n   */"];
    expect(yes.filter((s) => !mayImport(s))).toEqual([]);
    expect(no.filter((s) => mayImport(s))).toEqual([]);
  });

  it('is compiled by Node, so its import() works (a vm.Script has no loader for it)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dmthin-startup-test-'));
    try {
      const mod = join(dir, 'dynamic.js');
      writeFileSync(mod, "module.exports = () => import('node:os').then((m) => typeof m.cpus);\n");
      const startup = JSON.stringify(join(DIST, 'cli', 'startup.js'));
      const r = spawnSync(
        process.execPath,
        ['-e', `require(${startup}).installCodeCache(); require(${JSON.stringify(mod)})().then((t) => console.log(t));`],
        { encoding: 'utf8', env: { ...process.env, DMTHIN_CODE_CACHE_DIR: CACHE_DIR }, timeout: 60_000 },
      );
      expect({ status: r.status, stdout: r.stdout, stderr: r.stderr }).toEqual({ status: 0, stdout: 'function\n', stderr: '' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('node options', () => {
  it('a run with node options of its own keeps a cache file of its own (V8 refuses bytes made under other flags)', () => {
    rmSync(CACHE_DIR, { recursive: true, force: true });
    mkdirSync(CACHE_DIR);
    expect(run(['ls', POOL]).status).toBe(0);
    expect(run(['ls', POOL], {}, ['--max-semi-space-size=1']).status).toBe(0);
    // The pack is made by the first run and completed (its code cache) by the second.
    expect(run(['ls', POOL]).status).toBe(0);
    expect(run(['ls', POOL], {}, ['--max-semi-space-size=1']).status).toBe(0);
    const files = readdirSync(CACHE_DIR).sort();
    expect(files).toHaveLength(4);
    expect(files).toContain(`v8-${process.version}-${process.arch}-ls.bin`);
    expect(files).toContain(`v8-${process.version}-${process.arch}-ls.pack`);
    // Other runs with the options find their files whole: nothing is rewritten.
    const flagged = files.filter((f) => !f.startsWith(`v8-${process.version}-${process.arch}-ls.`)).map((f) => join(CACHE_DIR, f));
    expect(flagged).toEqual([expect.stringMatching(/-[0-9a-f]{8}-ls\.bin$/), expect.stringMatching(/-[0-9a-f]{8}-ls\.pack$/)]);
    const before = flagged.map((f) => statSync(f).mtimeMs);
    const bytes = flagged.map((f) => readFileSync(f));
    expect(run(['ls', POOL]).status).toBe(0);
    expect(run(['ls', POOL], {}, ['--max-semi-space-size=1']).status).toBe(0);
    expect(flagged.map((f) => statSync(f).mtimeMs)).toEqual(before);
    expect(flagged.map((f, i) => readFileSync(f).equals(bytes[i]))).toEqual([true, true]);
  });
});

describe('a cache directory others can write (outside hunt U)', () => {
  const plain = () => run(['ls', POOL], { DMTHIN_CODE_CACHE: '0' }).stdout;
  const name = (kind: 'bin' | 'pack') => `v8-${process.version}-${process.arch}-ls.${kind}`;
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'dmthin-shared-cache-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('a FIFO at a cache file\'s name does not block the run (it waited for a writer forever), and is replaced', () => {
    for (const k of ['bin', 'pack'] as const) expect(spawnSync('mkfifo', [join(dir, name(k))]).status).toBe(0);
    const r = run(['ls', POOL], { DMTHIN_CODE_CACHE_DIR: dir });
    expect(r.signal).toBeNull();
    expect([r.status, r.stdout]).toEqual([0, plain()]);
    for (const k of ['bin', 'pack'] as const) expect(statSync(join(dir, name(k))).isFile()).toBe(true);
  });

  it("a link at a save's temporary name is not followed: the file it names is left as it was (it was overwritten)", () => {
    const victim = join(dir, 'victim');
    writeFileSync(victim, 'not to be written');
    // The shell's pid is the CLI's after exec: the names its save will use.
    const links = (['bin', 'pack'] as const).map((k) => `ln -s ${victim} ${join(dir, name(k))}.$$.tmp`).join('; ');
    const r = spawnSync('sh', ['-c', `${links}; exec "$0" "$@"`, process.execPath, CLI, 'ls', POOL], {
      encoding: 'utf8',
      env: { ...process.env, NODE_OPTIONS: '', DMTHIN_CODE_CACHE_DIR: dir },
      timeout: 60_000,
    });
    expect([r.status, r.stdout]).toEqual([0, plain()]);
    expect(readFileSync(victim, 'utf8')).toBe('not to be written');
  });

  it('a directory at the pack\'s name: the runs after the first write nothing (each compiled and wrote a pack, and failed at its rename)', () => {
    mkdirSync(join(dir, name('pack')));
    expect(run(['ls', POOL], { DMTHIN_CODE_CACHE_DIR: dir }).stdout).toBe(plain());
    expect(run(['ls', POOL], { DMTHIN_CODE_CACHE_DIR: dir }).stdout).toBe(plain());
    // A save makes and removes a temporary file: the directory's modification time would move.
    const before = statSync(dir).mtimeMs;
    expect(run(['ls', POOL], { DMTHIN_CODE_CACHE_DIR: dir }).stdout).toBe(plain());
    expect(statSync(dir).mtimeMs).toBe(before);
    expect(statSync(join(dir, name('pack'))).isDirectory()).toBe(true);
  });

  it('--inspect in NODE_OPTIONS keeps no cache, as --inspect on the command line (stack traces name the files)', () => {
    const r = run(['ls', POOL], { DMTHIN_CODE_CACHE_DIR: dir, NODE_OPTIONS: '--inspect=127.0.0.1:0' });
    expect([r.status, r.stdout]).toEqual([0, plain()]);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a run under --experimental-policy starts (it crashed: a module has no constructor there)', () => {
    const policy = join(dir, 'policy.json');
    writeFileSync(policy, JSON.stringify({ onerror: 'log', resources: {} }));
    const r = run(['ls', POOL], { DMTHIN_CODE_CACHE_DIR: dir }, [`--experimental-policy=${policy}`]);
    expect([r.status, r.stdout]).toEqual([0, plain()]);
  });
});

describe('modules a command on a metadata file loads', () => {
  // Prints, at exit, the built-in modules Node loaded and the files required
  // (with writeSync: process.stderr on a pipe would load net itself).
  const dir = mkdtempSync(join(tmpdir(), 'dmthin-startup-test-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const hook = join(dir, 'loaded.js');
  writeFileSync(
    hook,
    "process.on('exit', () => require('fs').writeSync(2, JSON.stringify({ builtin: process.moduleLoadList, files: Object.keys(require.cache) })));",
  );
  const loaded = (args: string[]) => {
    const r = run(args, {}, ['-r', hook]);
    expect(r.status).toBe(0);
    return JSON.parse(r.stderr) as { builtin: string[]; files: string[] };
  };

  it.each([['ls'], ['dump'], ['check'], ['rmap', '--region', '0..1000']])('%s: no child_process, no dm or pool layer, no delta walker', (...args) => {
    const { builtin, files } = loaded([...args, POOL]);
    expect(builtin.filter((m) => /child_process/.test(m))).toEqual([]);
    expect(files.filter((f) => f.startsWith(DIST) && /[/\\](dm|pool)[/\\]|thin[/\\]delta\.js$/.test(f))).toEqual([]);
  });

  // stdout is a pipe here (spawnSync): process.stdout would be a net.Socket.
  it.each([['ls'], ['dump'], ['check'], ['rmap', '--region', '0..1000'], ['delta', '--snap1', '1', '--snap2', '2']])(
    '%s: no net, streams, fs/promises or ESM resolver (stdout a pipe; see output/fd-writer.ts)',
    (...args) => {
      const { builtin } = loaded([...args, POOL]);
      expect(builtin.filter((m) => /^NativeModule (net|stream|internal\/streams\/(?!utils$).*|fs\/promises|internal\/fs\/promises|internal\/modules\/esm\/resolve)$/.test(m))).toEqual([]);
    },
  );

  it.each([['ls'], ['dump'], ['check'], ['delta', '--snap1', '1', '--snap2', '2'], ['rmap', '--region', '0..1000']])('%s: no node:os, node:module or ESM loader (loaded only for an error, or never)', (...args) => {
    const { builtin } = loaded([...args, POOL]);
    expect(builtin.filter((m) => /^NativeModule (os|module|internal\/modules\/esm\/loader|internal\/source_map\/source_map)$/.test(m))).toEqual([]);
  });

  it.each([['--help'], ['send', '--help'], ['receive', '--help'], ['ls', '--help']])('%s: no tty, net or streams (stdout a pipe, then /dev/null; stderr a pipe)', (...args) => {
    const { builtin } = loaded(args);
    expect(builtin.filter((m) => /^NativeModule (tty|net|stream|internal\/streams\/(?!utils$).*)$/.test(m))).toEqual([]);
    // /dev/null is a character device, as a terminal is: told apart without node:tty (which loads net).
    const r = spawnSync(process.execPath, ['-r', hook, CLI, ...args], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, NODE_OPTIONS: '', DMTHIN_CODE_CACHE_DIR: CACHE_DIR }, timeout: 60_000 });
    expect(r.status).toBe(0);
    const nul = JSON.parse(r.stderr) as { builtin: string[] };
    expect(nul.builtin.filter((m) => /^NativeModule (tty|net|stream|internal\/streams\/(?!utils$).*)$/.test(m))).toEqual([]);
  });

  it('packed modules are Node\'s own module objects: a file loaded later through require() finds the same instances', () => {
    // At exit, after `ls` ran from its pack: the library's entry (not in the pack) is required as a library caller would.
    const probe = join(dir, 'identity.js');
    writeFileSync(
      probe,
      `process.on('exit', () => {
         const errors = require.cache[${JSON.stringify(join(DIST, 'errors.js'))}];
         const lib = require(${JSON.stringify(join(DIST, 'index.js'))});
         require('fs').writeSync(2, JSON.stringify({ loaded: errors && errors.loaded, same: !!errors && lib.DmthinError === errors.exports.DmthinError, packed: Object.keys(require.cache).length }));
       });`,
    );
    for (let i = 0; i < 3; i++) {
      const r = run(['ls', POOL], {}, ['-r', probe]);
      expect(r.status).toBe(0);
      expect(JSON.parse(r.stderr)).toMatchObject({ loaded: true, same: true });
    }
  });

  it("commander is the file Node's own resolution names", () => {
    const r = spawnSync(
      process.execPath,
      [
        '-e',
        `const want = require.resolve('commander', { paths: [${JSON.stringify(join(DIST, 'cli'))}] });
         require(${JSON.stringify(join(DIST, 'cli', 'startup.js'))}).resolveCliModulesDirectly();
         const m = require(${JSON.stringify(join(DIST, 'cli', 'main.js'))});
         const got = Object.keys(require.cache).filter((f) => /[\\/]commander[\\/]/.test(f));
         console.log(JSON.stringify({ want, got, main: typeof m.main }));`,
      ],
      { encoding: 'utf8', env: { ...process.env, DMTHIN_CODE_CACHE: '0' }, timeout: 60_000 },
    );
    expect(r.stderr).toBe('');
    const { want, got, main } = JSON.parse(r.stdout) as { want: string; got: string[]; main: string };
    expect(got).toContain(want);
    expect(main).toBe('function');
  });

  it("every relative request of every dist/ file resolves to the file Node's own resolver names", () => {
    // Node's resolver is kept before startup.ts replaces it; each request is
    // then resolved both ways from a module object for its file.
    const r = spawnSync(
      process.execPath,
      [
        '-e',
        `const Module = require('module'), fs = require('fs'), path = require('path');
         const node = Module._resolveFilename;
         require(${JSON.stringify(join(DIST, 'cli', 'startup.js'))}).resolveCliModulesDirectly();
         const files = [];
         const walk = (d) => { for (const e of fs.readdirSync(d, { withFileTypes: true })) { const p = path.join(d, e.name); if (e.isDirectory()) walk(p); else if (p.endsWith('.js')) files.push(p); } };
         walk(${JSON.stringify(DIST)});
         // commander's own files, once a dist/ file has asked for commander (their requests are answered too).
         const cmd = Module._resolveFilename('commander', Object.assign(new Module(files[0]), { filename: files[0], paths: Module._nodeModulePaths(path.dirname(files[0])) }), false);
         const before = files.length;
         walk(path.dirname(cmd));
         if (files.length - before < 5) throw new Error('commander has too few files: ' + (files.length - before));
         let checked = 0; const differ = [];
         for (const f of files) {
           const parent = new Module(f); parent.filename = f; parent.paths = Module._nodeModulePaths(path.dirname(f));
           for (const m of fs.readFileSync(f, 'utf8').matchAll(/require\\(["'](\\.{1,2}\\/[^"']+)["']\\)/g)) {
             let want, got;
             try { want = node.call(Module, m[1], parent, false); } catch (e) { want = e.code; }
             try { got = Module._resolveFilename(m[1], parent, false); } catch (e) { got = e.code; }
             checked++; if (want !== got) differ.push([f, m[1], want, got]);
           }
         }
         console.log(JSON.stringify({ checked, differ }));`,
      ],
      { encoding: 'utf8', env: { ...process.env, DMTHIN_CODE_CACHE: '0' }, timeout: 60_000 },
    );
    expect(r.stderr).toBe('');
    const { checked, differ } = JSON.parse(r.stdout) as { checked: number; differ: unknown[] };
    expect(differ).toEqual([]);
    expect(checked).toBeGreaterThan(300);
  });

  it('the addon is loaded by its path, in the order `bindings` tries (build/, Debug, Release), without loading `bindings`', () => {
    // A copy of the package whose build/ has a Debug and a Release addon: Debug wins, as with `bindings`.
    const root = mkdtempSync(join(tmpdir(), 'dmthin-addon-order-'));
    try {
      const pkg = join(__dirname, '..', '..');
      cpSync(DIST, join(root, 'dist'), { recursive: true, filter: (src) => !src.includes('.code-cache') });
      cpSync(join(pkg, 'package.json'), join(root, 'package.json'));
      symlinkSync(join(pkg, 'node_modules'), join(root, 'node_modules'));
      const release = join(pkg, 'build', 'Release', 'dmthin.node');
      const loaded = () => {
        const r = spawnSync(process.execPath, ['-r', hook, join(root, 'dist', 'cli', 'main.js'), 'ls', POOL], { encoding: 'utf8', env: { ...process.env, DMTHIN_CODE_CACHE: '0' }, timeout: 60_000 });
        expect(r.status).toBe(0);
        return (JSON.parse(r.stderr) as { files: string[] }).files.filter((f) => /dmthin\.node$|[\\/]bindings[\\/]/.test(f)).map((f) => f.slice(root.length + 1));
      };
      mkdirSync(join(root, 'build', 'Release'), { recursive: true });
      cpSync(release, join(root, 'build', 'Release', 'dmthin.node'));
      expect(loaded()).toEqual(['build/Release/dmthin.node']);
      mkdirSync(join(root, 'build', 'Debug'), { recursive: true });
      cpSync(release, join(root, 'build', 'Debug', 'dmthin.node'));
      expect(loaded()).toEqual(['build/Debug/dmthin.node']);
      // Another layout (out/Release): found by `bindings`.
      rmSync(join(root, 'build'), { recursive: true });
      mkdirSync(join(root, 'out', 'Release'), { recursive: true });
      cpSync(release, join(root, 'out', 'Release', 'dmthin.node'));
      const other = loaded();
      expect(other).toContain('out/Release/dmthin.node');
      expect(other.some((f) => f.includes('bindings'))).toBe(true);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('a command reads no package.json; -V and --version (anywhere on the line) read it and print its version', () => {
    const pkg = join(DIST, '..', 'package.json');
    expect(loaded(['ls', POOL]).files).not.toContain(pkg);
    expect(loaded(['--help']).files).not.toContain(pkg);
    const { version } = JSON.parse(readFileSync(pkg, 'utf8')) as { version: string };
    for (const args of [['-V'], ['--version'], ['ls', '-V'], ['ls', POOL, '--version']]) {
      const r = run(args, {}, ['-r', hook]);
      expect([r.status, r.stdout]).toEqual([0, `${version}\n`]);
      expect((JSON.parse(r.stderr) as { files: string[] }).files).toContain(pkg);
    }
  });

  it('--help loads no command implementation: no btree, walker, checker, dump, ls table or rmap sort', () => {
    const { files } = loaded(['--help']);
    expect(files.filter((f) => f.startsWith(DIST) && /[/\\](pdata[/\\]btree|thin[/\\](check|dump|ls|rmap|rmap-runs|delta|delta-format|metadata))\.js$/.test(f))).toEqual([]);
    // ls's help lists its fields from the small module that holds them.
    const ls = loaded(['ls', '--help']).files;
    expect(ls).toContain(join(DIST, 'thin', 'ls-fields.js'));
    expect(ls.filter((f) => f.startsWith(DIST) && /[/\\](pdata[/\\]btree|thin[/\\](check|dump|ls|rmap|rmap-runs|delta|delta-format|metadata))\.js$/.test(f))).toEqual([]);
  });

  it("the root help and `help CMD` load no command's file but the one named (they list the commands from COMMAND_LIST)", () => {
    const commandFiles = (args: string[]) =>
      loaded(args)
        .files.filter((f) => f.startsWith(join(DIST, 'cli') + '/'))
        .map((f) => f.slice(join(DIST, 'cli').length + 1))
        .filter((f) => /^(dump|ls|delta|rmap|pool|message|devices|send|receive|replicate|merge|check|backup|restore|backups)\.js$/.test(f));
    expect(commandFiles(['--help'])).toEqual([]);
    expect(commandFiles(['help'])).toEqual([]);
    expect(commandFiles(['help', 'send'])).toEqual(['send.js']);
  });

  it('delta loads its walker (and still no dm or pool layer)', () => {
    const { files } = loaded(['delta', '--snap1', '1', '--snap2', '2', POOL]);
    expect(files).toContain(join(DIST, 'thin', 'delta.js'));
    expect(files.filter((f) => f.startsWith(DIST) && /[/\\](dm|pool)[/\\]/.test(f))).toEqual([]);
  });
});

describe('libuv thread pool', () => {
  // A child process reports its own threads (/proc/self/task) as it exits, through a preloaded probe.
  const threads = (dir: string, args: string[], env: Record<string, string | undefined>) => {
    const probe = join(dir, 'probe.js');
    writeFileSync(probe, `process.on('exit', () => process.stderr.write('THREADS ' + require('fs').readdirSync('/proc/self/task').length + '\\n'));`);
    const e = { ...process.env, ...env };
    for (const [k, v] of Object.entries(env)) if (v === undefined) delete e[k];
    const r = spawnSync(process.execPath, ['-r', probe, CLI, ...args], { encoding: 'utf8', env: e, timeout: 60_000 });
    expect(r.status).toBe(0);
    const m = /THREADS (\d+)/.exec(r.stderr);
    return m ? Number(m[1]) : -1;
  };

  it('a repository command starts 32 threads, another command 4, and UV_THREADPOOL_SIZE wins', () => {
    const dir = mkdtempSync(join(tmpdir(), 'dmthin-pool-'));
    try {
      const repo = join(dir, 'repo');
      const backups = threads(dir, ['backups', 'init', '--repo', repo, '--json'], { UV_THREADPOOL_SIZE: undefined });
      const ls = threads(dir, ['ls', join(__dirname, '..', '..', 'examples', 'pool.bin')], { UV_THREADPOOL_SIZE: undefined });
      rmSync(repo, { recursive: true, force: true });
      const told = threads(dir, ['backups', 'init', '--repo', repo, '--json'], { UV_THREADPOOL_SIZE: '6' });
      expect(backups - ls).toBe(28);
      expect(told - ls).toBe(2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the files Node compiles from source on every run', () => {
  // main.js, and what it loads before the pack is installed, are compiled
  // by Node from their files every run. V8 keeps a source one byte a
  // character only when all of it is Latin-1, and Node decodes a file as
  // UTF-8: one non-ASCII character in a comment made startup.js's 41 KB a
  // two-byte string of 82 KB (young garbage every run) and its scan slower.
  // native/crc32c-portable.js too: without the addon, start-up checks the pack with it.
  it.each(['cli/main.js', 'cli/startup.js', 'cli/commands.js', 'native/addon-file.js', 'native/crc32c-portable.js'])('%s is ASCII', (file) => {
    const bytes = readFileSync(join(DIST, file));
    const at = bytes.findIndex((b) => b >= 0x80);
    expect({ file, firstNonAscii: at }).toEqual({ file, firstNonAscii: -1 });
  });
});
