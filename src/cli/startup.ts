/**
 * Start-up of the CLI: what a run loads and how it is compiled.
 *
 * Commander loads node:child_process (with net, dgram, streams...) at import
 * for its executable subcommands, which dmthin has none of: ~6-15 ms of
 * every run. deferCommanderChildProcess gives commander a stand-in that loads
 * the real module on first use.
 *
 * A V8 code cache for the modules a CLI run loads. Node 20 compiles every
 * CommonJS file from source on every run (its own compile cache,
 * module.enableCompileCache, came with Node 22): for a short command that was
 * the largest part of its start-up after Node's own. Each module is compiled
 * as a vm.Script with the bytes V8 produced for it on an earlier run, which
 * also hold the functions that run compiled then (not only the top level).
 *
 * The cache is a file in dist/.code-cache/ per command (a run reads the
 * bytes of what it loads, not of every command's modules: ls read 700 KB for
 * the 200 KB it used), named by Node's version, architecture, node options (a
 * hash of them) and the command, read once at start-up and rewritten (a
 * temporary file renamed over it) at exit only when a module had no valid
 * entry. An entry is used
 * only for the same path, source length and change time (ctime), and V8 itself
 * rejects bytes made by another V8 or other flags; a rejected or missing entry
 * costs what a run without the cache costs. The directory is beside the code
 * it caches and trusted as much (who can write there can change the code);
 * when it cannot be written the cache is simply not kept.
 * DMTHIN_CODE_CACHE=0 turns it off; DMTHIN_CODE_CACHE_DIR=DIR keeps it in DIR.
 */
import { accessSync, closeSync, constants, fstatSync, fsyncSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { isAscii } from 'node:buffer';
import { basename, dirname, join, resolve as resolvePath } from 'node:path';
import { Script } from 'node:vm';
import { fileMapFunctions, type FileMapFunctions } from '../native/addon-file';
// The CommonJS Module class, as `require('node:module')` exports it: taken
// from this module's own object, since loading node:module also loads Node's
// ESM loader and source-map support (~1.5 ms) that a CLI run never uses.
const Module = module.constructor as unknown as ModuleInternals;
// Under --experimental-policy a module has no such constructor: the CLI then
// starts as Node would start it (none of the changes below).
const MODULE_OK = typeof (Module as unknown as { prototype?: { _compile?: unknown } } | undefined)?.prototype?._compile === 'function';

interface CjsModule {
  exports: unknown;
  require(id: string): unknown;
}
type LoadingModule = CjsModule & { _compile(content: string, filename: string): unknown };
interface RequireFn {
  (id: string): unknown;
  resolve: ((request: string, options?: { paths?: string[] }) => string) & { paths(request: string): string[] | null };
  main: unknown;
  extensions: unknown;
  cache: unknown;
}
interface ModuleInternals {
  prototype: { _compile(this: CjsModule, content: string, filename: string): unknown };
  wrap(content: string): string;
  _resolveFilename(request: string, parent: CjsModule, isMain: boolean, options?: { paths?: string[] }): string;
  _resolveLookupPaths(request: string, parent: CjsModule): string[] | null;
  _extensions: unknown;
  _cache: unknown;
}

/** An entry of the cache file's index: bytes [o, o + n) of its data part. */
interface Entry {
  /** Module path. */
  f: string;
  /** Source length (UTF-16 units). */
  s: number;
  /**
   * Source change time (ms): ctime, which every write sets and no copy,
   * tar extraction or touch can set back (with the modification time, a
   * file rewritten with its old size and mtime ran from the cache as before).
   */
  m: number;
  o: number;
  n: number;
  /**
   * CRC-32C of the entry's cached bytes (a cache file's entries; a pack's
   * header has one for the pack): V8 does not check the code cache it is
   * given (one byte changed made a command fail at every run, or run wrong
   * code), nor a script's source against it.
   */
  k?: number;
}

/**
 * Hands commander's own `require('node:child_process')` a stand-in that
 * loads the module when a property is first read (never, for dmthin's
 * commands). Only requests made from commander's files are affected.
 */
export function deferCommanderChildProcess(): void {
  if (!MODULE_OK) return;
  const M = Module as ModuleInternals & { _load(request: string, parent: { filename?: string } | undefined, isMain: boolean): unknown };
  const load = M._load;
  let stand: object | undefined;
  M._load = function (request: string, parent: { filename?: string } | undefined, isMain: boolean): unknown {
    if ((request === 'node:child_process' || request === 'child_process') && /[\\/]commander[\\/]/.test(parent?.filename ?? '')) {
      stand ??= new Proxy(
        {},
        {
          get: (_t, key) => (load.call(M, request, parent, false) as Record<string | symbol, unknown>)[key],
          has: (_t, key) => key in (load.call(M, request, parent, false) as object),
        },
      );
      return stand;
    }
    return load.call(this, request, parent, isMain);
  };
}

/**
 * Resolves the CLI's own requests with less work than Node's general
 * resolver (which they would otherwise pay on every run):
 * - `require('commander')` from dist/: without Node's package-exports
 *   resolver, whose first use loads and compiles Node's ESM resolution
 *   modules (~3 ms): the first node_modules/commander on the lookup path
 *   (Node's order) whose package.json maps "." for require to a file is
 *   loaded by that file's path.
 * - a relative request of one dist/ file for another ('./ls', '../errors'):
 *   one stat of the .js file, where Node tries the bare name first, then each
 *   extension, then takes the real path. tsc writes every request without an
 *   extension and dist/ has no extensionless files or symbolic links, so the
 *   answer is Node's. The stat's change time is kept for the code
 *   cache's check (one stat, not two).
 * - a relative request of one commander file for another ('./lib/help.js',
 *   './suggestSimilar'): the path as written, else with .js, as Node tries
 *   first (Node's resolver took ~2 ms for commander's six).
 * - loading those files and commander's without looking up their package
 *   scope: Node reads the nearest package.json of every .js file to see
 *   whether it is an ES module; dmthin's and commander's are CommonJS.
 * Any other request or shape goes through Node as usual.
 */
export function resolveCliModulesDirectly(): void {
  if (!MODULE_OK) return;
  const M = Module as ModuleInternals & { _nodeModulePaths(from: string): string[] };
  const resolve = M._resolveFilename;
  let found: string | undefined;
  M._resolveFilename = function (request: string, parent: CjsModule & { filename?: string }, isMain: boolean, options?: { paths?: string[] }): string {
    if (options === undefined && parent?.filename?.startsWith(ROOT + '/')) {
      if (request === 'commander') {
        found ??= commanderMain(M._nodeModulePaths(dirname(parent.filename)));
        if (found) return found;
      } else if (request.startsWith('./') || request.startsWith('../')) {
        const file = resolvePath(dirname(parent.filename), request) + '.js';
        const st = file.startsWith(ROOT + '/') ? statSync(file, { throwIfNoEntry: false }) : undefined;
        if (st?.isFile()) {
          knownStats.set(file, st);
          return file;
        }
      }
    } else if (options === undefined && found && (request.startsWith('./') || request.startsWith('../')) && parent?.filename?.startsWith(dirname(found) + '/')) {
      // Within commander: the request as written, else with .js (Node's first two tries).
      const base = resolvePath(dirname(parent.filename), request);
      for (const file of [base, base + '.js']) {
        const st = file.startsWith(dirname(found) + '/') ? statSync(file, { throwIfNoEntry: false }) : undefined;
        if (st?.isFile()) {
          knownStats.set(file, st);
          return file;
        }
      }
    }
    return resolve.call(this, request, parent, isMain, options);
  };
  const extensions = M._extensions as Record<string, (module: LoadingModule, filename: string) => unknown>;
  const js = extensions['.js'];
  extensions['.js'] = function (module, filename) {
    if (filename.startsWith(ROOT + '/') || (found && filename.startsWith(dirname(found) + '/'))) {
      return compileFile ? compileFile(module, filename) : module._compile(readFileSync(filename, 'utf8'), filename);
    }
    return js.call(this, module, filename);
  };
}

/** Size and change time of files resolveCliModulesDirectly() found (their stat), for installCodeCache(). */
const knownStats = new Map<string, { size: number; ctimeMs: number }>();

/** Set by installCodeCache(): compiles a file of dist/ or commander from its cache, read as installCodeCache wants it. */
let compileFile: ((module: LoadingModule, filename: string) => unknown) | undefined;

function commanderMain(dirs: string[]): string {
  for (const d of dirs) {
    let pkg: { exports?: Record<string, unknown> };
    try {
      pkg = JSON.parse(readFileSync(join(d, 'commander', 'package.json'), 'utf8')) as typeof pkg;
    } catch {
      continue; // not here: the next directory up, as Node looks
    }
    const dot = pkg.exports?.['.'] as { require?: { default?: unknown } | string } | undefined;
    const target = typeof dot?.require === 'string' ? dot.require : dot?.require?.default;
    if (typeof target !== 'string' || !target.startsWith('./')) return '';
    const file = join(d, 'commander', target);
    try {
      const st = statSync(file);
      if (!st.isFile()) return '';
      knownStats.set(file, st); // for the code cache: its read needs no second stat
      return file;
    } catch {
      return '';
    }
  }
  return '';
}

/** dist/: the files whose requests resolveCliModulesDirectly() answers. */
const ROOT = join(__dirname, '..');

/** The run's node options: the command line's, then NODE_OPTIONS. */
const NODE_OPTIONS_LINE = [...process.execArgv, process.env.NODE_OPTIONS ?? ''].join(' ').trim();

// DMTHIN_CODE_CACHE_DIR moves it (tests use a directory of their own).
const DIR = process.env.DMTHIN_CODE_CACHE_DIR || join(__dirname, '..', '.code-cache');
// V8 rejects bytes made under other flags: runs with node options of their
// own (the #! line's, NODE_OPTIONS) keep a file of their own instead of
// rewriting one file in turns (every run of `dmthin` alternating with runs
// of `node dist/cli/main.js` compiled everything anew).
const FILE_PREFIX = join(DIR, `v8-${process.version}-${process.arch}${flagsTag(NODE_OPTIONS_LINE)}`);

/** '' without node options, else '-' and a short hash of them (FNV-1a: loads no crypto). */
function flagsTag(options: string): string {
  if (options === '') return '';
  let h = 0x811c9dc5;
  for (let i = 0; i < options.length; i++) h = Math.imul(h ^ options.charCodeAt(i), 0x01000193);
  return `-${(h >>> 0).toString(16).padStart(8, '0')}`;
}

/**
 * The cache file's group for a run of `command` (the CLI's first argument):
 * the command itself when it is one of `commands`, else "main" (help,
 * version, a usage error).
 */
export function cacheGroup(command: string | undefined, commands: readonly string[]): string {
  return command !== undefined && commands.includes(command) ? command : 'main';
}

/** Commands that store or fetch repository chunks, and how many libuv threads they start with. */
const REPOSITORY_COMMANDS = ['backup', 'restore', 'backups'];
const REPOSITORY_THREADS = '32';

/**
 * Gives a repository command 32 libuv threads, not 4 (unless
 * UV_THREADPOOL_SIZE is set): a local put holds a thread through two
 * fsyncs, and the journal commits many waiting ones at once (see
 * repo/repository.ts, chunksAtOnce). libuv reads the variable when its pool
 * first starts, so this runs before anything can use it; the other
 * commands keep 4 (creating 32 threads costs a short command ~1-2 ms).
 */
export function sizeThreadPool(command: string | undefined): void {
  if (command !== undefined && REPOSITORY_COMMANDS.includes(command) && process.env.UV_THREADPOOL_SIZE === undefined) process.env.UV_THREADPOOL_SIZE = REPOSITORY_THREADS;
}

/**
 * V8's collector as the CLI wants it, set before anything compiles with a
 * code cache (V8 signs a cache with its flags, these included); without the
 * addon (or with one built before these calls) nothing changes:
 * - the minor GC task off (native/allocator.cc says why: a short command's
 *   one turn of the event loop no longer collects a young generation it
 *   would never fill);
 * - the young generation kept at its initial 1 MiB a semi-space (growth
 *   factor 1): a long walk grew it to 16 MiB a semi-space, garbage that dies
 *   young held in RSS (10M-mapping dump 91 -> 72 MiB peak). This was the #!
 *   line's --max-semi-space-size=1, but any V8 flag given at start makes V8
 *   refuse the code caches of Node's own built-in modules, so each one
 *   loaded after it (node:vm, the AbortController's module) compiled from
 *   source. Left alone when the node options size the young generation
 *   themselves (a user's --max-semi-space-size=64 means growth).
 * The AbortController's module (every command's CliContext makes one) is
 * loaded first, while Node's code caches still match the flags: flags set
 * here change the signature from then on. And the addon starts counting full
 * collections (see codeOfThisRunComplete).
 */
export function tuneCollector(): void {
  const addon = fileMaps();
  if (!addon) return;
  void AbortController;
  addon.majorGcCount?.();
  addon.minorGcTask?.(false);
  if (!/(^|\s)--((max|min)[-_])?semi[-_]space[-_](size|growth[-_]factor)\b/.test(NODE_OPTIONS_LINE)) addon.semiSpaceGrowth?.(1);
}

/**
 * Installs the cache for the modules loaded from now on (once; not under an
 * inspector or DMTHIN_CODE_CACHE=0), in the file of `group` (see cacheGroup).
 */
export function installCodeCache(group = 'main'): void {
  // Not under an inspector (breakpoints and stack traces name the files), --inspect given on the command line or in NODE_OPTIONS.
  if (!MODULE_OK || process.env.DMTHIN_CODE_CACHE === '0' || process.execArgv.some((a) => a.startsWith('--inspect')) || /(^|\s)--inspect/.test(process.env.NODE_OPTIONS ?? '')) return;
  const FILE = `${FILE_PREFIX}-${group}.bin`;
  crcFunction(); // before the hook below compiles anything
  const proto = Module.prototype;
  const original = proto._compile;
  // The file: u32 length of a JSON index, the index, then the cached bytes.
  const index = new Map<string, Entry>();
  let data: Buffer = Buffer.alloc(0);
  // Read when a module is first compiled on its own: a run whose modules all come from the pack never reads it.
  let read = false;
  const readIndex = (): void => {
    read = true;
    try {
      const file = readOwnFile(FILE);
      const len = file.readUInt32LE(0);
      for (const e of JSON.parse(file.toString('utf8', 4, 4 + len)) as Entry[]) index.set(e.f, e);
      data = file.subarray(4 + len);
      // An earlier version's file, its entries not 8-byte aligned (V8 copies such cached data): written again aligned.
      if ((4 + len) % 8 !== 0 || [...index.values()].some((e) => e.o % 8 !== 0)) stale = true;
    } catch {
      // No cache yet, or an unreadable one: it is rebuilt at exit.
    }
  };
  const compiled: { e: Entry; script: Script | null }[] = [];
  let stale = false;
  /**
   * Compiles and runs one module from `wrapped` (its source inside Node's
   * function wrapper, `length` UTF-16 units of it the file's own);
   * `plain` gives the unwrapped source for Node's own compile.
   */
  const compile = (mod: CjsModule, filename: string, wrapped: string, length: number, ctime: number, plain: () => string, ours: boolean): unknown => {
    // A vm.Script has no loader for import() (Node 20's USE_MAIN_CONTEXT_DEFAULT_LOADER
    // prints an ExperimentalWarning): a file that may use it compiles as Node compiles it.
    // dist/'s and commander's files (`ours`) may name import() in JSDoc
    // comments; any other module's mention counts.
    if (ours ? mayImport(wrapped) : wrapped.includes('import(')) return original.call(mod, plain(), filename);
    if (!read) readIndex();
    const old = index.get(filename);
    const usable = old !== undefined && old.s === length && old.m === ctime && old.o + old.n <= data.length && old.k === crc32cOf([data.subarray(old.o, old.o + old.n)]);
    let script: Script;
    try {
      script = new Script(wrapped, { filename, cachedData: usable ? data.subarray(old.o, old.o + old.n) : undefined });
    } catch {
      // A syntax error: let Node's own compile report it as usual.
      return original.call(mod, plain(), filename);
    }
    const hit = usable && !script.cachedDataRejected;
    if (!hit) stale = true;
    compiled.push({ e: hit ? old : { f: filename, s: length, m: ctime, o: 0, n: 0 }, script: hit ? null : script });
    const fn = script.runInThisContext({ displayErrors: true }) as (...args: unknown[]) => unknown;
    return fn.call(mod.exports, mod.exports, requireFor(mod), mod, filename, dirname(filename));
  };
  proto._compile = function (this: CjsModule, content: string, filename: string): unknown {
    let ctime: number;
    try {
      ctime = knownStats.get(filename)?.ctimeMs ?? statSync(filename).ctimeMs;
    } catch {
      return original.call(this, content, filename);
    }
    // A hashbang line is valid only at the start of a script: blank it (lines stay where they are).
    const source = content.startsWith('#!') ? content.replace(/^#![^\n]*/, '') : content;
    return compile(this, filename, Module.wrap(source), content.length, ctime, () => content, false);
  };
  // Files the resolver found (dist/, commander): read into one buffer between
  // the wrapper's two halves and decoded once. Module.wrap(readFileSync(...))
  // made two strings of every source (the file's, then the flat wrapped one
  // V8 compiles), ~600 KB of young garbage for a short `ls`.
  const [head, tail] = Module.wrap('\0').split('\0').map((x) => Buffer.from(x, 'utf8'));
  const wrapperLength = Module.wrap('').length;
  compileFile = (mod, filename) => {
    const packed = pack.function(filename);
    if (packed) return pack.run(packed, mod as unknown as PackModule, filename);
    let buf: Buffer;
    let st: { size: number; ctimeMs: number };
    try {
      const fd = openSync(filename, 'r');
      try {
        st = knownStats.get(filename) ?? fstatSync(fd);
        buf = Buffer.allocUnsafe(head.length + st.size + tail.length);
        head.copy(buf, 0);
        let off = 0;
        while (off < st.size) {
          const n = readSync(fd, buf, head.length + off, st.size - off, null);
          if (n === 0) break;
          off += n;
        }
        // Changed since its stat (being rebuilt): Node reads it as it is now.
        if (off !== st.size || readSync(fd, Buffer.allocUnsafe(1), 0, 1, null) !== 0) throw new Error('changed');
      } finally {
        closeSync(fd);
      }
    } catch {
      return mod._compile(readFileSync(filename, 'utf8'), filename);
    }
    tail.copy(buf, head.length + st.size);
    blankHashbang(buf, head.length, head.length + st.size);
    const wrapped = buf.toString('utf8');
    const length = wrapped.length - wrapperLength;
    // Not in the pack (or changed since it was made): the next one holds it, unless it uses import()
    // or cannot be written in ASCII (then it is never packed, and never makes the pack stale).
    if (!mayImport(wrapped) && asciiSource(buf.subarray(head.length, head.length + st.size)) !== undefined) pack.missed({ f: filename, s: st.size, m: st.ctimeMs, o: 0, n: 0 });
    return compile(mod, filename, wrapped, length, st.ctimeMs, () => wrapped.slice(head.length, wrapped.length - tail.length), true);
  };
  const pack = new ModulePack(`${FILE_PREFIX}-${group}.pack`, MAPPED_GROUPS.includes(group));
  process.once('exit', () => {
    const complete = codeOfThisRunComplete();
    if (stale && complete) save(FILE, index, data, compiled);
    pack.saveIfStale(complete);
  });
}

/** V8's --bytecode-old-age: full collections after which a function that has not run loses its bytecode. */
const BYTECODE_OLD_AGE = 5;

/**
 * Whether the code this run compiled is all still there to be cached: V8
 * drops the bytecode of a function that has not run for BYTECODE_OLD_AGE
 * full collections, so a long run (a walk of 40M mappings) wrote a code
 * cache without what only its start-up ran (149 KB where a tiny run wrote
 * 243), and every later run compiled that from source. Such a run writes
 * no code cache (one below the age, in case V8 drops at the age itself); a
 * later one does. Without the addon's count, as before: yes.
 */
function codeOfThisRunComplete(): boolean {
  const n = fileMaps()?.majorGcCount?.();
  return n === undefined || n < BYTECODE_OLD_AGE - 1;
}

/** Whether a command's action ran in this process (noteActionRan): see ModulePack.saveIfStale. */
let actionRan = false;

/** Called by the CLI as a command's action starts (program.ts's preAction hook). */
export function noteActionRan(): void {
  actionRan = true;
}

/** A module as the pack runs it: Node's Module object. */
type PackModule = CjsModule & { filename: string; paths?: string[]; loaded?: boolean };
type ModuleFunction = (exports: unknown, require: RequireFn, module: PackModule, filename: string, dirname: string) => unknown;

/** A module in a pack's index: its file's size (bytes) and change time (ctime) when packed, and bytes [o, o + n) of the pack's source. */
type PackEntry = Entry;

/**
 * The module pack of a command group: the sources of the dist/ and
 * commander files its runs loaded, as functions of one script compiled
 * with one V8 code cache, and loaded among themselves without Node's
 * module loader. Loading ~35 files one by one (resolve, stat, read, a
 * vm.Script and a cache entry each, Module._load's bookkeeping) took ~7 ms
 * of a short command's ~16; from the pack, a file costs a stat and a call
 * (`ls` of a 1M-mapping image: 0.91x wall, 31 paired runs).
 *
 * A packed file is used only while its size and change time are the
 * ones packed (else it is read and compiled as before, and the next pack
 * holds the new source). Modules are Node's own Module objects in
 * require.cache, so a file loaded outside the pack (a module the pack does
 * not hold yet, or a library caller's require) finds the same instance. A
 * request the pack cannot answer (a built-in, another package, a file it
 * does not hold) goes to the module's own require. The pack is rewritten
 * (a temporary file renamed over it) at exit when a run loaded a file it
 * lacked, and once more by the next run to add V8's code cache for it.
 * File: u32 length of a JSON header {e: entries, n: source bytes}, the
 * header, the source, then the code cache.
 */
/** Whether a pack's source is JavaScript V8 compiles (not run). */
function compiles(source: Buffer): boolean {
  try {
    new Script(source.toString('latin1'));
    return true;
  } catch {
    return false;
  }
}

/** What begins and ends each packed module's function. */
const openOf = (f: string): Buffer => Buffer.from(`p[${JSON.stringify(f)}] = function (exports, require, module, __filename, __dirname) {\n`);
const CLOSE = Buffer.from('\n};\n');

/** Whether `e`'s bytes in `source` lie between its function's opening and CLOSE, as a save wrote them. */
function framed(source: Buffer, e: PackEntry): boolean {
  const open = openOf(e.f);
  const end = e.o + e.n;
  return e.o >= open.length && end + CLOSE.length <= source.length && source.subarray(e.o - open.length, e.o).equals(open) && source.subarray(end, end + CLOSE.length).equals(CLOSE);
}

class ModulePack {
  private entries = new Map<string, PackEntry>();
  /** The entries' freshness, each file stat'ed once. */
  private readonly fresh = new Map<string, boolean>();
  /** The pack file's length and header as read: its source is reused at exit only from a file that still has them. */
  private header: Buffer | undefined;
  private cache: Uint8Array | undefined;
  private script: Script | undefined;
  private fns: Record<string, ModuleFunction> | null | undefined;
  private readonly misses: PackEntry[] = [];
  private stale = false;
  /** Its code cache was made by a run whose command's action ran (a: true in the header). */
  private cacheFromAction = false;

  /** `mapped`: the source and code cache may be mapped from the file (MAPPED_GROUPS), else they are read. */
  constructor(
    private readonly file: string,
    mapped: boolean,
  ) {
    let own: { fd: number; size: number };
    try {
      own = openOwnFile(file);
    } catch {
      this.stale = true; // none yet (or not ours)
      return;
    }
    try {
      const { fd, size } = own;
      const head = readAt(fd, 0, Math.min(size, 4));
      const len = head.length === 4 ? head.readUInt32LE(0) : Infinity;
      if (4 + len > size) throw new Error('not a pack');
      const json = readAt(fd, 4, len);
      const h = JSON.parse(json.toString('utf8')) as { e: PackEntry[]; n: number; k: number; a?: boolean };
      // k: an older version's pack has none (made again, as a damaged one).
      if (!Array.isArray(h.e) || !Number.isSafeInteger(h.n) || h.n < 0 || 4 + len + h.n > size || !Number.isInteger(h.k)) throw new Error('not a pack');
      for (const e of h.e) if (e.o + e.n <= h.n) this.entries.set(e.f, e);
      this.cacheFromAction = h.a === true;
      // An earlier version's pack, its code cache not 8-byte aligned (V8 copies it, every run): written again aligned (see padTo8).
      if ((4 + len) % 8 !== 0 || h.n % 8 !== 0) this.stale = true;
      this.header = Buffer.concat([head, json]);
      // Source and code cache mapped from the file where the addon can
      // (native/file_map.cc): read, they were a 610 KB buffer of fresh
      // memory and a copy of the source into a string (ls: ~170 more page
      // faults a run). A long run's source is read into memory of its own
      // (V8 keeps it), its code cache mapped all the same (V8 reads it
      // only while the pack compiles, at once). Read otherwise. Either is
      // used only if the pack's bytes are the ones written (k).
      const at = 4 + len;
      const rest = size - at - h.n;
      const map = fileMaps();
      const mappedBytes = map ? mapOrNull(() => map.mapBytes(fd, at, size - at)) : null;
      const bytes = mappedBytes ?? readAt(fd, at, size - at);
      if (bytes.length !== size - at || crc32cOf([bytes]) !== h.k) throw new Error('damaged');
      // A save writes the source as ASCII; it is found to be so here, on the
      // bytes just checked (their pages in memory already), so the string's
      // own memory is not scanned (touched) again.
      const ascii = isAscii(bytes.subarray(0, h.n));
      const source = map && ascii ? mapOrNull(() => (mapped ? map.mapAscii(fd, at, h.n, true) : map.readAscii(fd, at, h.n, true))) : null;
      // Without a string of its own, the source as read (never a long run's mapping).
      this.source = source ?? (mappedBytes ? readAt(fd, at, h.n) : Buffer.from(bytes.buffer, bytes.byteOffset, h.n));
      this.cache = rest > 0 ? bytes.subarray(h.n) : undefined;
    } catch {
      this.entries.clear();
      this.stale = true;
    } finally {
      closeSync(own.fd);
    }
  }

  /**
   * The pack's source until it is compiled (then dropped: V8 keeps its
   * own): the file's mapping as a string, or its bytes as read.
   */
  private source: string | Buffer | undefined;

  /** The packed function of `filename`, if the pack holds its current source. */
  function(filename: string): ModuleFunction | undefined {
    const e = this.entries.get(filename);
    if (e === undefined || !this.isFresh(e)) return undefined;
    if (this.fns === undefined) this.compile();
    return this.fns?.[filename];
  }

  private isFresh(e: PackEntry): boolean {
    let ok = this.fresh.get(e.f);
    if (ok === undefined) {
      const st = knownStats.get(e.f) ?? sizeAndChangeTime(e.f);
      ok = st !== undefined && st.size === e.s && st.ctimeMs === e.m;
      this.fresh.set(e.f, ok);
    }
    return ok;
  }

  private compile(): void {
    this.fns = null;
    const source = this.source;
    this.source = undefined;
    if (!source) return;
    try {
      const cachedData = this.cache && this.cache.length > 0 ? this.cache : undefined;
      this.script = new Script(typeof source === 'string' ? source : source.toString('utf8'), { filename: this.file, cachedData });
      if (!cachedData || this.script.cachedDataRejected) this.stale = true;
      this.fns = this.script.runInThisContext({ displayErrors: true }) as Record<string, ModuleFunction>;
    } catch {
      // Not a pack this Node can run: every file is loaded as before, and the pack made again.
      this.fns = null;
      this.script = undefined;
      this.stale = true;
    }
    this.cache = undefined;
  }

  /** Runs a packed module as Node runs a file's. */
  run(fn: ModuleFunction, mod: PackModule, filename: string): unknown {
    return fn.call(mod.exports, mod.exports, this.requireFor(mod), mod, filename, dirname(filename));
  }

  /** The `require` of a packed module: packed files directly, anything else through the module's own. */
  private requireFor(mod: PackModule): RequireFn {
    const require = requireFor(mod);
    const dir = dirname(mod.filename);
    const fast = ((id: string): unknown => {
      let f: string | undefined;
      if (id.startsWith('./') || id.startsWith('../')) {
        // Node's order: the request as written, then with .js (tsc writes none; commander both ways).
        const base = joinRelative(dir, id);
        f = this.entries.has(base) ? base : this.entries.has(base + '.js') ? base + '.js' : undefined;
      }
      // Anything else, commander too, through the module's own require: its
      // place is resolved anew every run (a nearer node_modules/commander may
      // have appeared since the pack was made); its files still come from the pack.
      if (f === undefined) return mod.require(id);
      const cached = (Module._cache as Record<string, PackModule | undefined>)[f];
      if (cached) return cached.exports;
      const fn = this.function(f);
      if (!fn) return mod.require(id);
      const M = Module as unknown as { new (id: string, parent: unknown): PackModule; _nodeModulePaths(from: string): string[] };
      const m = new M(f, mod);
      m.filename = f;
      m.paths = this.pathsOf(dirname(f), M);
      const cache = Module._cache as Record<string, PackModule | undefined>;
      cache[f] = m;
      let threw = true;
      try {
        this.run(fn, m, f);
        threw = false;
      } finally {
        if (threw) delete cache[f];
      }
      m.loaded = true;
      return m.exports;
    }) as RequireFn;
    fast.resolve = require.resolve;
    fast.main = require.main;
    fast.extensions = require.extensions;
    fast.cache = require.cache;
    return fast;
  }

  /**
   * The `paths` of a packed module in `dir` (where its require() looks for
   * packages): one array for the modules of a directory (~10 strings each;
   * Node makes one a module). Node reads a module's paths, never changes them.
   */
  private pathsOf(dir: string, M: { _nodeModulePaths(from: string): string[] }): string[] {
    let paths = this.dirPaths.get(dir);
    if (paths === undefined) this.dirPaths.set(dir, (paths = M._nodeModulePaths(dir)));
    return paths;
  }
  private readonly dirPaths = new Map<string, string[]>();

  /** A file loaded outside the pack (compiled from its own source): the pack is made again at exit. */
  missed(e: PackEntry): void {
    this.misses.push(e);
    this.stale = true;
  }

  /**
   * Writes the pack again when this run found it missing, damaged, without
   * a usable code cache or lacking a file it loaded: the entries still
   * fresh, from the old pack's source, and the files it lacked, from disk.
   * The code cache only when the source is the one this run compiled and
   * `withCode` (its compiled code is whole: codeOfThisRunComplete).
   */
  saveIfStale(withCode: boolean): void {
    // A code cache holds the functions compiled when it was made: one a run
    // of `send --help` made (the bench's first run of the group) lacked all
    // of send's own, compiled from the source at every send after (~5% of a
    // tiny send). The first run whose action ran makes it again, once.
    if (actionRan && !this.cacheFromAction && this.script !== undefined) this.stale = true;
    if (!this.stale || !cacheDirWritable()) return;
    try {
      const old = this.oldSource();
      const parts: Buffer[] = [Buffer.from('(function () {\nconst p = Object.create(null);\n')];
      let at = parts[0].length;
      const entries: PackEntry[] = [];
      const add = (e: PackEntry, body: Buffer) => {
        const open = openOf(e.f);
        parts.push(open, body, CLOSE);
        entries.push({ ...e, o: at + open.length, n: body.length });
        at += open.length + body.length + CLOSE.length;
      };
      if (this.misses.length === 0 && this.script !== undefined) {
        // The source this run compiled, whole (the file unchanged since): only its code cache is new,
        // left to a later run when this one's is not whole (codeOfThisRunComplete).
        if (!withCode) return;
        // (A source an earlier version wrote unpadded is written padded, without a cache: the next run makes one for it.)
        if (old) this.write([...this.entries.values()], old, old.length % 8 === 0 ? this.script.createCachedData() : Buffer.alloc(0), actionRan && old.length % 8 === 0);
        return;
      }
      const missed = new Set(this.misses.map((e) => e.f));
      // An entry is copied when its bytes lie where its offsets say in a
      // source that compiles (this run's, or the old one checked now). One
      // that does not (a damaged pack, or one an earlier version wrote with
      // each offset a byte further off) is read from its file again, if it
      // is unchanged: copied, it would fail again at every run.
      const oldCompiles = old !== undefined && (this.script !== undefined || compiles(old));
      const fromFiles = [...this.misses];
      for (const e of this.entries.values()) {
        if (missed.has(e.f) || !this.isFresh(e)) continue;
        if (oldCompiles && framed(old, e)) add(e, old.subarray(e.o, e.o + e.n));
        else fromFiles.push(e);
      }
      for (const e of fromFiles) {
        const body = readFileSync(e.f);
        const st = statSync(e.f);
        // Changed since it was loaded: left out (the next run packs what is there then).
        if (body.length !== e.s || st.size !== e.s || st.ctimeMs !== e.m) continue;
        blankHashbang(body, 0, body.length);
        const ascii = asciiSource(body);
        if (ascii) add(e, ascii);
      }
      parts.push(Buffer.from('return p;\n})()\n'));
      this.write(entries, padTo8(Buffer.concat(parts), 0x20), Buffer.alloc(0), false);
    } catch {
      // Unreadable or unwritable: the next run loads files one by one, as without a pack.
    }
  }

  /** The source of the pack this run read, if its file still holds it (another run may have rewritten it since). */
  private oldSource(): Buffer | undefined {
    if (!this.header) return undefined;
    try {
      const b = readOwnFile(this.file);
      if (!b.subarray(0, this.header.length).equals(this.header)) return undefined;
      const { n, k } = JSON.parse(b.toString('utf8', 4, this.header.length)) as { n: number; k: number };
      // Still the bytes checked at start (a file changed in place since is not signed anew).
      if (crc32cOf([b.subarray(this.header.length)]) !== k) return undefined;
      return b.subarray(this.header.length, this.header.length + n);
    } catch {
      return undefined;
    }
  }

  private write(entries: PackEntry[], unpadded: Buffer, cache: Buffer, fromAction: boolean): void {
    const source = padTo8(unpadded, 0x20);
    const json = padTo8(Buffer.from(JSON.stringify({ e: entries, n: source.length, k: crc32cOf([source, cache]), a: fromAction })), 0x20, 4);
    const head = Buffer.alloc(4);
    head.writeUInt32LE(json.length, 0);
    writeAtomically(this.file, [head, json, source, cache]);
  }
}

/**
 * `b` with bytes `fill` appended so that `before` + its length is a multiple
 * of 8: the pack's code cache (after the header and the source) and a cache
 * file's entries start 8-byte aligned in the file, and so in memory, mapped
 * or read. V8 copies cached data that is not pointer-aligned before it reads
 * it: for `send` 280 KB of fresh memory, ~70 page faults a run.
 * (Spaces after the source and after JSON are no change to either.)
 */
function padTo8(b: Buffer, fill: number, before = 0): Buffer {
  const pad = (8 - ((before + b.length) % 8)) % 8;
  return pad === 0 ? b : Buffer.concat([b, Buffer.alloc(pad, fill)]);
}

/**
 * path.resolve(dir, id) for an absolute `dir` and an `id` of './' and '../'
 * steps before a plain relative path (what tsc and commander write),
 * without path.resolve's process.cwd() and normalisation: those were ~110 KB
 * of young garbage for the ~40 requests of a short command. Any other shape
 * goes to path.resolve.
 */
export function joinRelative(dir: string, id: string): string {
  let d = dir;
  let at = 0;
  for (;;) {
    if (id.startsWith('./', at)) at += 2;
    else if (id.startsWith('../', at)) {
      at += 3;
      const slash = d.lastIndexOf('/');
      if (slash <= 0) return resolvePath(dir, id);
      d = d.slice(0, slash);
    } else break;
  }
  const rest = id.slice(at);
  if (d === '/' || rest === '' || rest.startsWith('/') || rest.endsWith('/') || rest.includes('//') || /(^|\/)\.\.?(\/|$)/.test(rest)) return resolvePath(dir, id);
  return `${d}/${rest}`;
}

/** A file's size and change time (ctime, ms) through the addon (no Stats, no Dates), else fs.statSync; undefined if it cannot be stat'ed. */
function sizeAndChangeTime(path: string): { size: number; ctimeMs: number } | undefined {
  const stat = fileMaps()?.statFile;
  if (typeof stat !== 'function') return statSync(path, { throwIfNoEntry: false });
  const out = (statOut ??= new Float64Array(3));
  return stat(path, out) ? { size: out[0], ctimeMs: out[1] } : undefined;
}
let statOut: Float64Array | undefined;

/** A hashbang line at `from` in a source's bytes, blanked with spaces (lines stay where they are: see _compile above). */
function blankHashbang(buf: Buffer, from: number, to: number): void {
  if (buf[from] === 0x23 && buf[from + 1] === 0x21) for (let i = from; i < to && buf[i] !== 0x0a; i++) buf[i] = 0x20;
}

/**
 * A module's source with every character beyond ASCII written as a \u
 * escape, or undefined when that could change what it means (a backslash
 * before such a character, raw template strings, line terminators, white
 * space and astral characters beyond ASCII). V8 keeps a script's
 * source as one byte a character only when all of it is Latin-1: one em dash
 * in a comment of one module would make the whole pack's copy two bytes a
 * character (~0.7 MB more for `send`). In comments, strings, regular
 * expressions and identifiers the escape means the character itself.
 * @internal exported for tests
 */
export function asciiSource(body: Buffer): Buffer | undefined {
  if (!body.some((b) => b >= 0x80)) return body;
  const text = body.toString('utf8');
  if (/String\.raw|\.raw\b/.test(text)) return undefined;
  // Characters whose escape is not the character everywhere (a review): line
  // terminators (U+2028 ends a // comment; \u2028 does not), white space
  // beyond ASCII and the BOM (between tokens, an escape is a syntax error),
  // and astral characters (their surrogate escapes are no identifier).
  if (/[\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff\ud800-\udfff]/.test(text)) return undefined;
  let out = '';
  let last = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) continue;
    if (text.charCodeAt(i - 1) === 0x5c) return undefined;
    out += text.slice(last, i) + '\\u' + c.toString(16).padStart(4, '0');
    last = i + 1;
  }
  return Buffer.from(out + text.slice(last), 'latin1');
}

/**
 * Whether a source may call import(): any `import(` but those on a line that
 * is a comment's (starting with `//`, or with `*` and no `*` + `/` before it:
 * a JSDoc line such as commander's `@typedef { import("./command.js").Command }`,
 * which made Node compile help.js from source on every run). Errs towards
 * yes: `f(); // import(x)` counts.
 */
export function mayImport(source: string): boolean {
  for (let i = source.indexOf('import('); i !== -1; i = source.indexOf('import(', i + 7)) {
    const line = source.slice(source.lastIndexOf('\n', i) + 1, i).trimStart();
    const comment = line.startsWith('//') || (line.startsWith('*') && !line.includes('*/'));
    if (!comment) return true;
  }
  return false;
}

/** The `require` a module sees, as Node makes it. */
function requireFor(mod: CjsModule): RequireFn {
  const require = ((id: string) => mod.require(id)) as RequireFn;
  const resolve = ((request: string, options?: { paths?: string[] }) => Module._resolveFilename(request, mod, false, options)) as RequireFn['resolve'];
  resolve.paths = (request: string) => Module._resolveLookupPaths(request, mod);
  require.resolve = resolve;
  require.main = process.mainModule;
  require.extensions = Module._extensions;
  require.cache = Module._cache;
  return require;
}

/** Writes the entries of this run (new bytes for the misses) and the earlier ones for other modules. */
function save(FILE: string, index: Map<string, Entry>, data: Buffer, compiled: { e: Entry; script: Script | null }[]): void {
  if (!cacheDirWritable()) return;
  const parts: Buffer[] = [];
  const entries: Entry[] = [];
  let at = 0;
  const add = (e: Entry, bytes: Buffer): void => {
    entries.push({ f: e.f, s: e.s, m: e.m, o: at, n: bytes.length, k: crc32cOf([bytes]) });
    const padded = padTo8(bytes, 0);
    parts.push(padded);
    at += padded.length;
  };
  const done = new Set<string>();
  for (const { e, script } of compiled) {
    if (done.has(e.f)) continue;
    done.add(e.f);
    add(e, script ? script.createCachedData() : data.subarray(e.o, e.o + e.n));
  }
  // Entries this run did not use are copied only if their bytes still match their CRC (signed anew, a damaged one would pass from then on).
  for (const e of index.values()) {
    if (done.has(e.f) || e.o + e.n > data.length) continue;
    const bytes = data.subarray(e.o, e.o + e.n);
    if (e.k === crc32cOf([bytes])) add(e, bytes);
  }
  const json = padTo8(Buffer.from(JSON.stringify(entries)), 0x20, 4);
  const head = Buffer.alloc(4);
  head.writeUInt32LE(json.length, 0);
  writeAtomically(FILE, [head, json, ...parts]);
}

/**
 * A cache or pack file, if this user (or root) owns it; else throws. Both
 * are code this process runs: one another local user wrote (a cache
 * directory in /tmp, DMTHIN_CODE_CACHE_DIR) would run as whoever runs
 * dmthin.
 */
function readOwnFile(path: string): Buffer {
  const { fd } = openOwnFile(path);
  try {
    return readFileSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** readOwnFile's open and checks: the descriptor (the caller closes it) and the file's size. */
function openOwnFile(path: string): { fd: number; size: number } {
  // O_NONBLOCK: a FIFO at the name (another user's, in a shared directory) must not block the open; it is refused below.
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    const uid = process.getuid?.();
    if (!st.isFile() || (uid !== undefined && st.uid !== uid && st.uid !== 0)) throw new Error(`${path} is not this user's file`);
    return { fd, size: st.size };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/** `length` bytes of fd at `position` (fewer only at the file's end). */
function readAt(fd: number, position: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  let got = 0;
  while (got < length) {
    const n = readSync(fd, b, got, length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got === length ? b : b.subarray(0, got);
}

/**
 * The command groups whose pack is mapped, not read: the commands on a
 * metadata file and help, whose runs are short and whose start-up is most
 * of them. V8 reads a script's source again for as long as the process
 * lives (functions compiled lazily, error positions), so a mapped pack
 * changed in place under a run would change the code it runs, and one
 * truncated (or an I/O error on its blocks) would end it with SIGBUS; a
 * long run (receive waiting on its input, replicate's cycles, backup) reads
 * its pack's source into memory of its own (readAscii) and maps only the
 * code cache, which V8 reads once, as the pack compiles. dmthin replaces
 * its packs by rename, never in place.
 */
const MAPPED_GROUPS = ['ls', 'dump', 'delta', 'rmap', 'check', 'main'];

/** A mapping, or null where making it threw (a Node that refuses external buffers): the caller then reads. */
function mapOrNull<T>(f: () => T | null): T | null {
  try {
    return f();
  } catch {
    return null;
  }
}

/** The addon's file mappings (addon-file.ts), looked up once; null without them. */
let fileMapsFound: FileMapFunctions | null | undefined;
const fileMaps = (): FileMapFunctions | null => (fileMapsFound === undefined ? (fileMapsFound = fileMapFunctions(join(__dirname, '..', '..'))) : fileMapsFound);

/**
 * The addon's CRC-32C, else the JavaScript one (loaded only then): found
 * before the compile hook is installed, which checks a cached module with
 * it (looked up from inside the hook, the JavaScript one's own compile asked
 * for it again and got its module half made: "f is not a function").
 */
let crcFound: FileMapFunctions['crc32c'] | undefined;
function crcFunction(): FileMapFunctions['crc32c'] {
  return (crcFound ??= fileMaps()?.crc32c ?? (require('../native/crc32c-portable') as typeof import('../native/crc32c-portable')).crc32cPortable);
}

/** CRC-32C of the parts in order (crcFunction's). */
function crc32cOf(parts: Uint8Array[]): number {
  const f = crcFunction();
  let c = 0xffffffff;
  for (const p of parts) c = f(p, c, true);
  return ~c >>> 0;
}

/**
 * Whether the cache directory can be written (made when missing), asked
 * before a file is made: in a directory this user cannot write (an install
 * owned by root) every run would pay for making the cache and fail to keep
 * it, so none is made.
 */
function cacheDirWritable(): boolean {
  try {
    mkdirSync(DIR, { recursive: true });
    accessSync(DIR, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether a save could rename its file over what is at FILE: not over a
 * directory, nor over another user's file in a sticky directory (a shared
 * DMTHIN_CODE_CACHE_DIR in /tmp) unless root. Such a save failed at its
 * rename, after compiling and writing it all, at every run.
 */
function replaceable(FILE: string): boolean {
  try {
    const st = lstatSync(FILE, { throwIfNoEntry: false });
    if (st === undefined) return true;
    if (st.isDirectory()) return false;
    const uid = process.getuid?.();
    if (uid === undefined || uid === 0 || st.uid === uid) return true;
    const dir = statSync(DIR);
    return (dir.mode & 0o1000) === 0 || dir.uid === uid; // S_ISVTX
  } catch {
    return false;
  }
}

/**
 * Cache or pack files of one command group for other Node versions and node
 * options (each has files of its own): removed at a save once unused for
 * OTHERS_UNUSED_MS, and beyond OTHERS_KEPT the least recently used too.
 * Without a bound the directory grew by a file a group for every Node
 * upgrade and every distinct set of node options ever used
 * (--cpu-prof-dir=DIR, say), ~0.2-0.6 MB each. Not a small count alone: a
 * rotation of more configurations than it (a CI matrix) rewrote the cache
 * at every run.
 */
const OTHERS_UNUSED_MS = 30 * 86_400_000;
const OTHERS_KEPT = 64;

/**
 * Writes `parts` as `FILE`: a temporary file, fsynced, renamed over it.
 * Temporary files of FILE that a killed run left (a save takes
 * milliseconds: one a minute old is no one's) are removed first; they were
 * never removed, a few hundred KB each. So are the files of FILE's group and
 * kind that OTHERS_UNUSED_MS and OTHERS_KEPT retire ("used": the later of
 * access and modification times, as the file system keeps them; under
 * relatime an access moves the first at least once a day).
 */
function writeAtomically(FILE: string, parts: Buffer[]): void {
  if (!replaceable(FILE)) return;
  const tmp = `${FILE}.${process.pid}.tmp`;
  const own = basename(FILE);
  const prefix = `${own}.`;
  // v8-VERSION-ARCH[-FLAGS]-GROUP.KIND: the same GROUP.KIND.
  const kind = own.slice(own.lastIndexOf('-'));
  const others: { path: string; used: number }[] = [];
  let names: string[] = [];
  try {
    names = readdirSync(DIR);
  } catch {
    // unreadable: nothing to tidy
  }
  const now = Date.now();
  // Each entry on its own: one removed meanwhile by another run, or not ours to remove, stops nothing else.
  for (const name of names) {
    try {
      if (name !== own && name.startsWith('v8-') && name.endsWith(kind)) {
        const st = statSync(join(DIR, name), { throwIfNoEntry: false });
        if (st?.isFile()) others.push({ path: join(DIR, name), used: Math.max(st.atimeMs, st.mtimeMs) });
      } else if (name.startsWith(prefix) && /^\d+\.tmp$/.test(name.slice(prefix.length))) {
        const left = join(DIR, name);
        if (now - statSync(left).mtimeMs > 60_000) unlinkSync(left);
      }
    } catch {
      // (see above)
    }
  }
  others.sort((a, b) => b.used - a.used);
  for (const [i, { path, used }] of others.entries()) {
    if (i < OTHERS_KEPT && now - used <= OTHERS_UNUSED_MS) continue;
    try {
      unlinkSync(path);
    } catch {
      // (see above)
    }
  }
  try {
    // Created here, never through a link or over a file someone put at the name (a shared directory).
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644);
    try {
      for (const b of parts) for (let off = 0; off < b.length; ) off += writeSync(fd, b, off);
      // On disk before the rename: a crash must leave the old cache or the new one, never a torn one
      // (V8 checks a cache's versions and its source's length, not its bytes).
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, FILE);
  } catch {
    // Read-only install, full disk...: run without a cache.
    try {
      unlinkSync(tmp);
    } catch {
      // nothing was written
    }
  }
}
