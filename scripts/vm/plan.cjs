// The root-VM runner's plan (scripts/vm/run-vm-tests.mjs): how many guests,
// how many vCPUs each, which test files go to which guest, and what runs
// again after a guest-kernel fault. Pure functions, in CommonJS so that the
// host suite tests them (test/vm-tool/vm-plan.test.ts) without booting.
'use strict';
const { availableParallelism } = require('node:os');

/** jest's pattern for the tests that get a boot of their own. */
const ISOLATED = '\\.isolated\\.vm\\.test\\.ts$';
const isolatedRe = new RegExp(ISOLATED);

/** Whether a test file (any path) gets a boot of its own. */
function isIsolated(file) {
  return isolatedRe.test(file);
}

/** A test file's weight in minutes: by its name; unknown files weigh one. */
function weightOf(file, weights = WEIGHTS) {
  return weights[file.split('/').pop()] ?? 1;
}

/**
 * How many guests share the suite: DMTHIN_VM_SHARDS, else 2 on a machine
 * with at least 2 CPUs. Each guest runs one test file at a time (dm and
 * loop devices are machine-wide) and keeps about one host core busy under
 * TCG, so two guests take about half the wall time of one.
 */
function shardCount(env = process.env, cores = availableParallelism()) {
  const n = Number(env.DMTHIN_VM_SHARDS);
  if (Number.isInteger(n) && n >= 1) return n;
  return Math.min(2, cores);
}

/**
 * vCPUs per guest: DMTHIN_VM_CPUS, else the host's cores shared among the
 * guests that run at once (at least 1). Under TCG each vCPU is a host
 * thread; more vCPU threads than cores let the host preempt a vCPU that
 * holds a guest lock while the others spin on it. Two guests of 2 vCPUs on
 * 2 cores took 1.45x the time of two guests of 1 (replication and
 * send-receive side by side, two rounds each, 2026-12-03); the whole suite
 * went from 1184-1196 s to 757 s wall.
 */
function guestCpus(guests, env = process.env, cores = availableParallelism()) {
  const n = Number(env.DMTHIN_VM_CPUS);
  if (Number.isInteger(n) && n >= 1) return n;
  return Math.max(1, Math.floor(cores / Math.max(1, guests)));
}

// Minutes of each test file under emulation (measured 2026-12-03 on a 2-core
// host, two guests of 1 vCPU side by side); files not listed count as one.
// Only used to balance the guests.
const WEIGHTS = {
  'replicate.vm.test.ts': 3.2,
  'merge.vm.test.ts': 3.1,
  'backup.vm.test.ts': 2.7,
  // Measured alone 2026-12-04 (jest 118 s, one guest): LVM set-up, two receives and three restores.
  'state-identity.vm.test.ts': 2,
  'lvm-names.vm.test.ts': 2.4,
  'receive-targets.vm.test.ts': 2,
  'stream-sizes.vm.test.ts': 1.9,
  'send-receive.vm.test.ts': 1.4,
  'replication.vm.test.ts': 1.2,
  'check.vm.test.ts': 1.1,
  'seed.vm.test.ts': 0.8,
  'release.vm.test.ts': 0.7,
  'messages.vm.test.ts': 0.6,
  'status.vm.test.ts': 0.5,
  'harness.vm.test.ts': 0.5,
  'events.vm.test.ts': 0.3,
  'block-writer.vm.test.ts': 0.1,
  // Its own boot (~8 s) included: it follows the guest that finishes first.
  'status-failure.isolated.vm.test.ts': 0.8,
};

/**
 * Test files into `n` groups of about equal weight (heaviest first, each to
 * the lightest group); each group sorted. `reserve` minutes start on the
 * first group: the isolated boot, which runs after whichever guest is done
 * first, so that both cores stay busy to the end instead of one waiting
 * while it runs alone.
 */
function splitForShards(files, n, weights = WEIGHTS, reserve = 0) {
  const weight = (f) => weightOf(f, weights);
  const groups = Array.from({ length: Math.max(1, Math.min(n, files.length)) }, (_, i) => ({ files: [], w: i === 0 && n > 1 ? reserve : 0 }));
  for (const f of [...files].sort((a, b) => weight(b) - weight(a) || a.localeCompare(b))) {
    const g = groups.reduce((m, x) => (x.w < m.w ? x : m));
    g.files.push(f);
    g.w += weight(f);
  }
  return groups.map((g) => g.files.sort());
}

/** Signs of a kernel fault in the guest's console or kernel log. */
const KERNEL_FAULT = /(invalid opcode: [0-9a-f]+|general protection fault|BUG: [^\n]*|kernel BUG at [^\n]*|Oops: [^\n]*|Unable to handle kernel [^\n]*)/;

/** The first kernel fault in `log`, or null. */
function kernelFault(log) {
  const m = KERNEL_FAULT.exec(log);
  return m ? m[1].trim() : null;
}

/**
 * After a boot that faulted: which of its `files` (paths relative to the
 * repository) jest's console output does not show as passed (`PASS
 * test/vm/x.vm.test.ts`, colours and line prefixes allowed). A file that
 * failed, or had not started when the guest died, runs again.
 */
function filesToRetry(output, files) {
  const plain = output.replace(/\x1b\[[0-9;]*m/g, '');
  // Jest's coloured label is " PASS " then a space; the name ends at a space.
  const passed = new Set([...plain.matchAll(/\bPASS\s+(test\/vm\/\S+\.vm\.test\.ts)(?=\s|$)/gm)].map((m) => m[1]));
  return files.filter((f) => !passed.has(f));
}

/** The weight of the isolated files: what splitForShards reserves for their boot. */
function isolatedWeight(files, weights = WEIGHTS) {
  return files.filter(isIsolated).reduce((t, f) => t + weightOf(f, weights), 0);
}

module.exports = { ISOLATED, isIsolated, shardCount, guestCpus, WEIGHTS, splitForShards, isolatedWeight, KERNEL_FAULT, kernelFault, filesToRetry };
