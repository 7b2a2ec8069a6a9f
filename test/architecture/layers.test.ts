/**
 * The layer rules of docs/architecture.md, checked on the code: every import
 * in src/ is parsed, and an import from one layer into another that the
 * importer may not use (a layer may use the ones it lists and, through them,
 * everything below) fails here, as does a cycle between layers and a file of
 * src/ that belongs to no layer (a new folder must be placed first).
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';

const ROOT = join(__dirname, '..', '..');
const SRC = join(ROOT, 'src');

/**
 * Layer -> the layers it may import directly (what those may import is
 * allowed too). Keep in step with the table in docs/architecture.md.
 */
export const LAYERS: Record<string, readonly string[]> = {
  base: [], // errors.ts, units.ts: usable everywhere
  native: ['base'],
  output: ['base'],
  pdata: ['native'],
  dm: ['native'],
  thin: ['pdata', 'output'],
  pool: ['thin', 'dm'],
  'stream/format': ['pdata'],
  'stream/send': ['stream/format', 'thin'],
  'stream/receive': ['stream/format', 'dm', 'output'],
  repo: ['output', 'native'], // backup repositories: backends, chunks, manifests (docs/repository.md)
  ops: ['stream/send', 'stream/receive', 'pool', 'repo'],
  cli: ['ops'],
  index: ['ops'], // src/index.ts, the package's face (`dmthin`)
  unstable: ['ops'], // src/unstable.ts, `dmthin/unstable`: internals offered without a promise
};

/** The layer of a path under src/ (without extension), or undefined. */
export function layerOf(rel: string): string | undefined {
  if (rel === 'errors' || rel === 'units') return 'base';
  if (rel === 'index') return 'index';
  if (rel === 'unstable') return 'unstable';
  const parts = rel.split('/');
  if (parts[0] === 'stream') return parts.length > 2 ? `stream/${parts[1]}` : undefined;
  return parts.length > 1 && parts[0] in LAYERS ? parts[0] : undefined;
}

/** Every layer `layer` may import: itself, and the closure of what it lists. */
export function reachable(layer: string, layers: Record<string, readonly string[]> = LAYERS): Set<string> {
  const seen = new Set<string>([layer]);
  const todo = [...(layers[layer] ?? [])];
  while (todo.length) {
    const l = todo.pop()!;
    if (seen.has(l)) continue;
    seen.add(l);
    todo.push(...(layers[l] ?? []));
  }
  seen.add('base');
  return seen;
}

export interface Import {
  from: string; // src-relative, no extension
  to: string;
}

/** The imports that break the rules, as "from -> to (fromLayer -> toLayer)". */
export function violations(imports: readonly Import[], layers: Record<string, readonly string[]> = LAYERS): string[] {
  const bad: string[] = [];
  for (const { from, to } of imports) {
    const a = layerOf(from);
    const b = layerOf(to);
    if (a === undefined || b === undefined) {
      bad.push(`${from} -> ${to} (${a ?? 'no layer'} -> ${b ?? 'no layer'})`);
      continue;
    }
    if (!reachable(a, layers).has(b)) bad.push(`${from} -> ${to} (${a} -> ${b})`);
  }
  return bad;
}

/** Cycles in the graph of layers as the code draws it, each as "a -> b -> a". */
export function layerCycles(imports: readonly Import[]): string[] {
  const edges = new Map<string, Set<string>>();
  for (const { from, to } of imports) {
    const a = layerOf(from) ?? from;
    const b = layerOf(to) ?? to;
    if (a === b) continue;
    if (!edges.has(a)) edges.set(a, new Set());
    edges.get(a)!.add(b);
  }
  const cycles: string[] = [];
  const state = new Map<string, 'open' | 'done'>();
  const path: string[] = [];
  const visit = (n: string): void => {
    state.set(n, 'open');
    path.push(n);
    for (const m of edges.get(n) ?? []) {
      if (state.get(m) === 'open') cycles.push([...path.slice(path.indexOf(m)), m].join(' -> '));
      else if (!state.has(m)) visit(m);
    }
    path.pop();
    state.set(n, 'done');
  };
  for (const n of [...edges.keys()].sort()) if (!state.has(n)) visit(n);
  return cycles;
}

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? tsFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

/** Relative specifiers of import/export ... from, import '...', require() and import() (type-only ones too). */
export function specifiers(code: string): string[] {
  const out: string[] = [];
  for (const m of code.matchAll(/(?:\bfrom\s*|\brequire\(\s*|\bimport\(\s*|^\s*import\s+)(['"])(\.{1,2}\/[^'"]*)\1/gm)) out.push(m[2]);
  return out;
}

function srcImports(): Import[] {
  const imports: Import[] = [];
  for (const file of tsFiles(SRC)) {
    const from = relative(SRC, file).replace(/\.ts$/, '');
    for (const spec of specifiers(readFileSync(file, 'utf8'))) {
      let to = normalize(join(dirname(from), spec)).replace(/\\/g, '/');
      if (to.startsWith('..')) continue; // outside src/ (package.json)
      const abs = join(SRC, to);
      if (existsSync(abs) && statSync(abs).isDirectory()) to = `${to}/index`; // a folder's index.ts
      imports.push({ from, to });
    }
  }
  return imports;
}

describe('layers', () => {
  const imports = srcImports();

  test('the parser sees the imports of src/', () => {
    // A parser that found nothing would make the rules below pass vacuously.
    expect(imports.length).toBeGreaterThan(150);
    expect(imports).toContainEqual({ from: 'cli/program', to: 'cli/common' });
    expect(imports).toContainEqual({ from: 'cli/main', to: 'cli/program' }); // an export ... from
    expect(imports).toContainEqual({ from: 'cli/send', to: 'ops/send' }); // a require()
    expect(imports).toContainEqual({ from: 'cli/pool', to: 'dm/targets/thin-pool' }); // an import type
  });

  test('every file of src/ belongs to a layer', () => {
    const orphans = tsFiles(SRC)
      .map((f) => relative(SRC, f).replace(/\.ts$/, ''))
      .filter((f) => layerOf(f) === undefined);
    expect(orphans).toEqual([]);
  });

  test('no import crosses a layer the wrong way', () => {
    expect(violations(imports)).toEqual([]);
  });

  test('no cycle between layers', () => {
    expect(layerCycles(imports)).toEqual([]);
  });

  test('the rules themselves have no cycle', () => {
    const declared = Object.entries(LAYERS).flatMap(([a, bs]) => bs.map((b) => ({ from: `${a}/x`, to: `${b}/x` })));
    expect(declared.length).toBeGreaterThan(10);
    expect(layerCycles(declared)).toEqual([]);
  });
});

describe('the checker fails on what it must refuse', () => {
  test('an upward import', () => {
    expect(violations([{ from: 'thin/dump', to: 'stream/send/plan' }])).toEqual(['thin/dump -> stream/send/plan (thin -> stream/send)']);
    expect(violations([{ from: 'pdata/btree', to: 'cli/common' }])).toHaveLength(1);
  });

  test('a sideways import between siblings', () => {
    expect(violations([{ from: 'stream/send/plan', to: 'pool/thin-pool' }])).toHaveLength(1);
    expect(violations([{ from: 'stream/receive/apply', to: 'stream/send/plan' }])).toHaveLength(1);
    expect(violations([{ from: 'native/binding', to: 'output/sink' }])).toHaveLength(1);
    // The entry points are the top: no layer may import them, nor they each other.
    expect(violations([{ from: 'cli/main', to: 'index' }])).toHaveLength(1);
    expect(violations([{ from: 'cli/main', to: 'unstable' }])).toHaveLength(1);
    expect(violations([{ from: 'index', to: 'unstable' }])).toHaveLength(1);
  });

  test('downward imports, errors and units are allowed', () => {
    expect(violations([
      { from: 'cli/dump', to: 'thin/dump' },
      { from: 'ops/send', to: 'pool/thin-pool' },
      { from: 'thin/dump', to: 'output/sink' },
      { from: 'native/binding', to: 'errors' },
      { from: 'index', to: 'dm/device-mapper' },
      { from: 'unstable', to: 'pdata/btree' },
    ])).toEqual([]);
  });

  test('a file outside every layer', () => {
    expect(violations([{ from: 'misc/helper', to: 'errors' }])).toHaveLength(1);
  });

  test('a cycle between folders', () => {
    expect(layerCycles([
      { from: 'thin/a', to: 'pdata/b' },
      { from: 'pdata/b', to: 'thin/c' },
    ])).toEqual(['pdata -> thin -> pdata']);
  });
});
