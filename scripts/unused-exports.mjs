#!/usr/bin/env node
// Lists exports of src/ that nothing uses: for every exported name of every
// src/ file, the identifiers of src/, test/ and examples/ that resolve to it
// (through imports and re-exports) are counted. Printed per name:
//   unused       referenced nowhere, not even in its own file
//   local-only   used only inside its own file (the `export` can go)
//   tests-only   used only by tests (and its own file)
//   index-only   re-exported by src/index.ts and used nowhere else: public
//                API, so it stays (the list is for whoever decides the API)
// Usage: node scripts/unused-exports.mjs [--all]  (exit 0; a report, not a gate)
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const ts = createRequire(import.meta.url)(join(root, 'node_modules', 'typescript'));

const cfgPath = join(root, 'tsconfig.test.json');
const cfg = ts.getParsedCommandLineOfConfigFile(cfgPath, {}, { ...ts.sys, onUnRecoverableConfigFileDiagnostic: () => {} });
const extra = ts.sys.readDirectory(join(root, 'examples'), ['.ts'], undefined, undefined);
const program = ts.createProgram([...cfg.fileNames, ...extra], cfg.options);
const checker = program.getTypeChecker();

const rel = (f) => relative(root, f);
const mine = program.getSourceFiles().filter((f) => !f.isDeclarationFile && !rel(f.fileName).startsWith('node_modules'));
const srcFiles = mine.filter((f) => rel(f.fileName).startsWith('src/'));

const resolve = (s) => (s && s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s);

// symbol -> {file, name, uses: Set<'own'|'src'|'test'|'index'>}
const exported = new Map();
for (const f of srcFiles) {
  const modSym = checker.getSymbolAtLocation(f);
  if (!modSym) continue;
  for (const e of checker.getExportsOfModule(modSym)) {
    const target = resolve(e);
    const decl = target.declarations?.[0];
    // Re-exports are counted at their origin, not where they pass through.
    if (!decl || decl.getSourceFile() !== f) continue;
    if (!exported.has(target)) exported.set(target, { file: rel(f.fileName), name: e.name, uses: new Set() });
  }
}

// What src/index.ts exports (`export *` included) is public API.
const indexFile = srcFiles.find((f) => rel(f.fileName) === 'src/index.ts');
const indexSym = indexFile && checker.getSymbolAtLocation(indexFile);
for (const e of indexSym ? checker.getExportsOfModule(indexSym) : []) exported.get(resolve(e))?.uses.add('index');

for (const f of mine) {
  const file = rel(f.fileName);
  const visit = (node) => {
    if (ts.isIdentifier(node)) {
      const s = resolve(checker.getSymbolAtLocation(node));
      const entry = s && exported.get(s);
      if (entry && !(s.declarations ?? []).some((d) => d.name === node)) {
        const kind = file === entry.file ? 'own' : file === 'src/index.ts' ? null : file.startsWith('src/') ? 'src' : 'test';
        // An import or re-export statement alone is no use; index.ts's re-exports were counted above.
        if (kind && !ts.findAncestor(node, (n) => ts.isImportDeclaration(n) || ts.isExportDeclaration(n))) entry.uses.add(kind);
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(f);
}

const all = process.argv.includes('--all');
const out = { unused: [], 'local-only': [], 'tests-only': [], 'index-only': [] };
for (const { file, name, uses } of exported.values()) {
  if (uses.has('src')) continue;
  const cls = uses.has('index')
    ? uses.has('test') || uses.has('own') ? (all ? 'index-only' : null) : 'index-only'
    : uses.has('test') ? 'tests-only' : uses.has('own') ? 'local-only' : 'unused';
  if (cls) out[cls].push(`${file}: ${name}`);
}
for (const [k, v] of Object.entries(out)) {
  console.log(`${k} (${v.length})`);
  for (const l of v.sort()) console.log(`  ${l}`);
}
