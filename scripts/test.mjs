#!/usr/bin/env node
// The project's one test command (`npm test`): the host jest suite, then the
// root-VM suite. Each part that cannot run here says so loudly; with
// DMTHIN_REQUIRE_ORACLE=1 / DMTHIN_REQUIRE_VM=1 (set by CI) a missing
// prerequisite is a failure instead of a skip.
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const extra = process.argv.slice(2);

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

// The CLI tests run dist/ as users do: compile first so it is never stale,
// into an empty dist/ so the package test sees no file of a removed source.
rmSync(join(root, 'dist'), { recursive: true, force: true });
let status = run(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json']);
if (status === 0) status = run(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.test.json']);
if (status !== 0) process.exit(status);
status = run(process.execPath, [join(root, 'node_modules/jest/bin/jest.js'), ...extra]);
const vmRunner = join(root, 'scripts/vm/run-vm-tests.mjs');
if (existsSync(vmRunner) && extra.length === 0) {
  const vmStatus = run(process.execPath, [vmRunner]);
  if (status === 0) status = vmStatus;
}
process.exit(status);
