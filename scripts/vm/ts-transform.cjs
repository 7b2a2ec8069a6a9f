'use strict';
// Jest transformer for the root-VM suite (jest.vm.config.js).
//
// Loading and running the TypeScript compiler inside the emulated guest
// costs seconds per run, so scripts/vm/run-vm-tests.mjs transpiles every
// .ts file the suite may load (src/**, test/vm/**) on the host first, with
// this module's precompile(), into the cache folder (.vm-cache/ts/ or
// $DMTHIN_VM_TS_CACHE), keyed by a hash of path + source + options. In the
// guest, process() only reads that cache (the host root is visible,
// read-only). A file that is not in the cache is transpiled on the spot,
// which is slow but correct, so the config also works outside the VM.
//
// This is transpilation only (ts.transpileModule, no type check): the host
// jest run type-checks the same files through ts-jest.
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.join(__dirname, '..', '..');
const FORMAT = '1';

let ts; // loaded only when something must be compiled
let tsVersion;

function typescriptVersion() {
  if (tsVersion === undefined) {
    try {
      tsVersion = require('typescript/package.json').version;
    } catch {
      tsVersion = 'none';
    }
  }
  return tsVersion;
}

/** Mirrors the parts of tsconfig.json that matter when emitting one file. */
function compilerOptions(t) {
  return {
    target: t.ScriptTarget.ES2022,
    module: t.ModuleKind.CommonJS,
    esModuleInterop: true,
    sourceMap: true,
    inlineSources: true,
    isolatedModules: true,
  };
}

function cacheDir() {
  return process.env.DMTHIN_VM_TS_CACHE || path.join(ROOT, '.vm-cache', 'ts');
}

function keyOf(source, filename) {
  return createHash('sha256')
    .update(`${FORMAT}\0${typescriptVersion()}\0${path.resolve(filename)}\0`)
    .update(source)
    .digest('hex');
}

function compile(source, filename) {
  if (!ts) ts = require('typescript');
  const out = ts.transpileModule(source, {
    compilerOptions: compilerOptions(ts),
    fileName: path.resolve(filename),
    reportDiagnostics: false,
  });
  const code = out.outputText.replace(/\n\/\/# sourceMappingURL=\S+\s*$/, '\n');
  return { code, map: out.sourceMapText ? JSON.parse(out.sourceMapText) : null };
}

function cachePath(key) {
  return path.join(cacheDir(), key.slice(0, 2), `${key}.json`);
}

function store(key, result) {
  const file = cachePath(key);
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(result));
    fs.renameSync(tmp, file);
  } catch {
    // read-only (the guest): fine
  }
}

let warnedMiss = false;

function transformSource(source, filename) {
  const key = keyOf(source, filename);
  try {
    return JSON.parse(fs.readFileSync(cachePath(key), 'utf8'));
  } catch {
    // not precompiled
  }
  if (process.env.DMTHIN_IN_VM === '1' && !warnedMiss) {
    warnedMiss = true;
    process.stderr.write(`[vm] ${path.relative(ROOT, filename)} was not precompiled on the host; transpiling in the guest (slow)\n`);
  }
  const result = compile(source, filename);
  store(key, result);
  return result;
}

/**
 * Host side: transpiles the given files into the cache (skipping those
 * already there). Returns { compiled, cached }.
 */
function precompile(files) {
  let compiled = 0;
  let cached = 0;
  for (const file of files) {
    const source = fs.readFileSync(file, 'utf8');
    const key = keyOf(source, file);
    if (fs.existsSync(cachePath(key))) {
      cached++;
      continue;
    }
    store(key, compile(source, file));
    compiled++;
  }
  return { compiled, cached };
}

module.exports = {
  process(sourceText, sourcePath) {
    return transformSource(sourceText, sourcePath);
  },
  getCacheKey(sourceText, sourcePath) {
    return keyOf(sourceText, sourcePath);
  },
  precompile,
  cacheDir,
};
