#!/usr/bin/env node
// `npm run build:cmake [-- cmake-js options]`: builds the native addon with
// cmake-js (CMakeLists.txt) instead of node-gyp. Both write
// build/Release/dmthin.node, where `bindings` finds it; each rebuild wipes
// build/ first, so the last one run is the one loaded.
//
// cmake-js downloads the Node.js headers unless npm_config_nodedir names an
// installation that has them (the same variable node-gyp reads). When it is
// unset and the running Node ships its headers (include/node under its prefix,
// as distribution packages and release tarballs do), use those: the build
// then needs no network.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

function fail(message) {
  process.stderr.write(`build:cmake: ${message}\n`);
  process.exit(1);
}

let cmakeJs;
try {
  cmakeJs = join(dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js');
} catch {
  fail('cmake-js is not installed; run `npm install` in the repository (it is a devDependency)');
}

const env = { ...process.env };
if (!env.npm_config_nodedir) {
  const prefix = dirname(dirname(process.execPath));
  if (existsSync(join(prefix, 'include', 'node', 'node.h'))) {
    env.npm_config_nodedir = prefix;
  } else {
    process.stderr.write(
      `build:cmake: no Node.js headers under ${prefix}/include/node; cmake-js will try to download them ` +
        '(set npm_config_nodedir to a Node.js installation prefix that has include/node to build offline)\n',
    );
  }
}

const args = process.argv.slice(2);
const r = spawnSync(
  process.execPath,
  [cmakeJs, 'rebuild', '--directory', root, '--parallel', String(availableParallelism()), ...args],
  { cwd: root, env, stdio: 'inherit' },
);
if (r.error) fail(`cannot run cmake-js: ${r.error.message}`);
if (r.status !== 0) fail(`cmake-js failed (exit status ${r.status ?? r.signal}); see its output above`);

// A shared object links with unresolved symbols; only loading it proves the
// addon is usable, so exit 0 promises that.
const addon = join(root, 'build', 'Release', 'dmthin.node');
try {
  require(addon);
} catch (e) {
  fail(`built ${addon} but it does not load: ${e.message}`);
}
process.stdout.write(`build:cmake: ${addon} built by cmake-js and loads\n`);
