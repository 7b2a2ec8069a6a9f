// Test-side access to the committed metadata fixtures (test/fixtures, made by
// scripts/fixtures/generate.mjs), the large generated images, and the
// reference tools (thin-provisioning-tools 0.9.0, "the oracle").

import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { gunzipSync } from 'node:zlib';

export const REPO_ROOT = join(__dirname, '..', '..');
export const FIXTURE_DIR = join(REPO_ROOT, 'test', 'fixtures');
export const GENERATOR = join(REPO_ROOT, 'scripts', 'fixtures', 'generate.mjs');

export interface TreeDepths {
  details: number;
  top: number;
  bottomMax: number;
}

export interface FixtureEntry {
  name: string;
  description: string;
  image: string;
  xml: string;
  size: number;
  sha256: string;
  xmlSha256: string;
  compressedSize: number;
  metadataBlocks: number;
  dataBlockSize: number;
  nrDataBlocks: number;
  /** decimal string: may exceed 2^53 */
  transaction: string;
  time: number;
  devices: number;
  /** counted per device (a subtree shared by several devices counts for each) */
  mappings: number;
  depth: TreeDepths;
  metadataAllocated: number;
  /** on-disk metadata nr_allocated minus counted allocated blocks (thin_restore 0.9.0 leaves +1) */
  metadataNrAllocatedSkew: number;
  /** thin_dump 0.9.0 of the live image equals the input XML byte for byte */
  dumpMatchesInput: boolean;
  /** for emulated images: thin_dump of the image as restored (before emulation) equalled the input */
  restoredDumpMatchesInput?: boolean;
  heldRoot?: number;
  held?: { transaction: string; time: number; devices: number; mappings: number; depth: TreeDepths };
  /** thin_dump -m equals the input XML with nr_data_blocks="0" (0.9.0 behaviour) */
  heldDumpMatchesInput?: boolean;
  /** first virtual block of each bottom-level leaf of the device checked */
  leafFirstKeys?: number[];
  emulated?: string;
  tags: string[];
}

export interface Manifest {
  comment: string;
  generator: string;
  fixtures: FixtureEntry[];
}

let manifestCache: Manifest | undefined;

export function loadManifest(): Manifest {
  manifestCache ??= JSON.parse(readFileSync(join(FIXTURE_DIR, 'manifest.json'), 'utf8')) as Manifest;
  return manifestCache;
}

/** All fixtures, or those carrying every tag given. */
export function listFixtures(...tags: string[]): FixtureEntry[] {
  return loadManifest().fixtures.filter((f) => tags.every((t) => f.tags.includes(t)));
}

export function fixture(name: string): FixtureEntry {
  const f = loadManifest().fixtures.find((x) => x.name === name);
  if (!f) throw new Error(`no fixture named ${name} in ${FIXTURE_DIR}/manifest.json`);
  return f;
}

/** The uncompressed metadata image of a fixture. */
export function fixtureImage(name: string): Buffer {
  return gunzipSync(readFileSync(join(FIXTURE_DIR, fixture(name).image)));
}

/** The input XML (thin_dump format) the fixture was restored from. */
export function fixtureXml(name: string): string {
  return gunzipSync(readFileSync(join(FIXTURE_DIR, fixture(name).xml))).toString('utf8');
}

export interface TempFile {
  path: string;
  cleanup(): void;
  [Symbol.dispose](): void;
}

/** Write a buffer to a fresh temp file; call cleanup() (or `using`) when done. */
export function tempImage(buf: Buffer, name = 'image.bin'): TempFile {
  const dir = mkdtempSync(join(tmpdir(), 'dmthin-test-'));
  const path = join(dir, name);
  writeFileSync(path, buf);
  const cleanup = (): void => rmSync(dir, { recursive: true, force: true });
  return { path, cleanup, [Symbol.dispose]: cleanup };
}

/** Decompress a fixture to a temp file. */
export function fixtureFile(name: string): TempFile {
  return tempImage(fixtureImage(name), `${name}.bin`);
}

// ---------------------------------------------------------------- oracle

export const ORACLE_TOOLS = ['thin_check', 'thin_dump', 'thin_ls', 'thin_delta', 'thin_restore'] as const;
export type OracleTool = (typeof ORACLE_TOOLS)[number];

/**
 * Path of a reference tool: only in $DMTHIN_ORACLE_DIR when that is set (point
 * it at an empty dir to simulate missing tools), else PATH and the sbin dirs.
 */
export function oraclePath(tool: string): string | null {
  const only = process.env.DMTHIN_ORACLE_DIR;
  const dirs = only
    ? [only]
    : [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin', '/usr/local/sbin'];
  for (const d of dirs) {
    if (d && existsSync(join(d, tool))) return join(d, tool);
  }
  return null;
}

let oracleState: { ok: boolean; reason: string; version: string } | undefined;

function probeOracle(): { ok: boolean; reason: string; version: string } {
  if (oracleState) return oracleState;
  const missing = ORACLE_TOOLS.filter((t) => !oraclePath(t));
  if (missing.length) {
    oracleState = { ok: false, reason: `${missing.join(', ')} not found (install thin-provisioning-tools 0.9.0)`, version: '' };
    return oracleState;
  }
  const r = spawnSync(oraclePath('thin_dump')!, ['-V'], { encoding: 'utf8' });
  const version = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  oracleState = { ok: true, reason: '', version };
  return oracleState;
}

/** True when every reference tool is installed. */
export function oracleAvailable(): boolean {
  return probeOracle().ok;
}

/** The reference tools' version string (e.g. "0.9.0"), or '' when absent. */
export function oracleVersion(): string {
  return probeOracle().version;
}

export interface OracleResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Run a reference tool; never throws on a non-zero exit. */
export function runOracle(tool: OracleTool | string, args: string[], opts: { input?: string } = {}): OracleResult {
  const p = oraclePath(tool);
  if (!p) throw new Error(`${tool} is not installed`);
  const r = spawnSync(p, args, { encoding: 'utf8', maxBuffer: 1 << 30, input: opts.input });
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const warned = new Set<string>();

function warnMissing(what: string): void {
  if (warned.has(what)) return;
  warned.add(what);
  process.stderr.write(
    `\n*** WARNING: SKIPPING oracle tests "${what}": ${probeOracle().reason}. ` +
      'Set DMTHIN_REQUIRE_ORACLE=1 to make this a failure. ***\n\n',
  );
}

const requireOracle = (): boolean => process.env.DMTHIN_REQUIRE_ORACLE === '1';
const skipTitle = (name: string): string => `${name} [SKIPPED: ORACLE MISSING - ${probeOracle().reason}]`;

/**
 * describe() for tests that need the reference tools. Without them the block
 * is registered as skipped with the reason in its title and a warning on
 * stderr, or fails when DMTHIN_REQUIRE_ORACLE=1.
 */
export function describeOracle(name: string, fn: () => void): void {
  if (oracleAvailable()) {
    describe(name, fn);
  } else if (requireOracle()) {
    describe(name, () => {
      it('requires the reference tools (DMTHIN_REQUIRE_ORACLE=1)', () => {
        throw new Error(`oracle required but missing: ${probeOracle().reason}`);
      });
    });
  } else {
    warnMissing(name);
    describe.skip(skipTitle(name), fn);
  }
}

/** it() counterpart of describeOracle. */
export function itOracle(name: string, fn: jest.ProvidesCallback, timeout?: number): void {
  if (oracleAvailable()) {
    it(name, fn, timeout);
  } else if (requireOracle()) {
    it(`${name} (requires the reference tools, DMTHIN_REQUIRE_ORACLE=1)`, () => {
      throw new Error(`oracle required but missing: ${probeOracle().reason}`);
    });
  } else {
    warnMissing(name);
    it.skip(skipTitle(name), fn, timeout);
  }
}

/**
 * thin_restore of an XML into a fresh file big enough for unshared trees
 * (`size`: the image it came from): the same mappings with no subtree shared.
 */
export function restoreFlat(xml: string, size: number, name: string): TempFile {
  const x = tempImage(Buffer.from(xml), `${name}.xml`);
  const out = tempImage(Buffer.alloc(0), `${name}.flat.bin`);
  const fd = openSync(out.path, 'r+');
  ftruncateSync(fd, Math.max(size * 8, 64 << 20));
  closeSync(fd);
  const r = runOracle('thin_restore', ['-q', '-i', x.path, '-o', out.path]);
  x.cleanup();
  if (r.status !== 0) throw new Error(`thin_restore failed for ${name}: ${r.stderr}`);
  return out;
}

// ---------------------------------------------------------------- large images

export interface LargeImage {
  path: string;
  xmlPath: string;
  key: string;
  n: number;
  mappings: number;
  runs: number;
  devices: number;
  depth: TreeDepths;
  size: number;
  sha256: string;
  nrDataBlocks: number;
  cached: boolean;
  seconds: { xml: number; restore: number };
}

/**
 * A generated image with at least n mappings (default 1,000,000), cached in
 * .fixtures-cache/ (or $DMTHIN_FIXTURES_CACHE). Needs thin_restore; the first
 * call takes a few seconds per million mappings.
 */
export function largeImage(n = 1_000_000): LargeImage {
  const r = spawnSync(process.execPath, [GENERATOR, '--large', String(n), '--json'], {
    encoding: 'utf8',
    maxBuffer: 1 << 26,
  });
  if (r.status !== 0) throw new Error(`fixture generator failed (${r.status}): ${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]) as LargeImage;
}

// ---------------------------------------------------------------- kernel-made images

export const KERNEL_FIXTURE_DIR = join(FIXTURE_DIR, 'kernel');

export interface KernelDevice {
  devId: number;
  mappedBlocks: number;
  mappings: number;
  snapshotOf: number | null;
  root: number;
  depth: number;
  leaves: number;
  internalNodes: number;
}

export interface ChangedLeaves {
  from: number;
  to: number;
  leavesOnlyInFirst: number;
  leavesOnlyInSecond: number;
  sharedLeaves: number;
  differingBlocks: number;
}

export interface KernelFixture {
  name: string;
  description: string;
  image: string;
  size: number;
  sha256: string;
  nrDataBlocks: number;
  heldRoot: number | null;
  mappings: number;
  devices: KernelDevice[];
  changedLeaves: ChangedLeaves[];
  held: { root: number; devices: KernelDevice[]; changedLeaves: ChangedLeaves[] } | null;
}

/** Metadata images made by a real kernel in the root VM (test/fixtures/kernel). */
export function listKernelFixtures(): KernelFixture[] {
  return (JSON.parse(readFileSync(join(KERNEL_FIXTURE_DIR, 'manifest.json'), 'utf8')) as { fixtures: KernelFixture[] }).fixtures;
}

export function kernelFixtureImage(name: string): Buffer {
  const f = listKernelFixtures().find((x) => x.name === name);
  if (!f) throw new Error(`no kernel fixture ${name}`);
  return gunzipSync(readFileSync(join(KERNEL_FIXTURE_DIR, f.image)));
}
