/**
 * The package's export lists, pinned: a name added to or dropped from
 * `dmthin` (src/index.ts) or `dmthin/unstable` (src/unstable.ts) fails here
 * until the list below is changed too, so a new export is a deliberate act.
 * Names are read with the TypeScript checker (types included), and the
 * runtime values are compared with the value names the checker reports.
 */
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import ts from 'typescript';

const ROOT = join(__dirname, '..', '..');

const MAIN = [
  'SetupError', 'SetupProblem', 'SinkTarget',
  'LvmPoolName', 'NameLookupError', 'NameLookupReason',
  'mergeIntoExternalOrigin', 'mergeSnapshot', 'MergeResult', 'MergeProgress', 'ExternalMergeOptions', 'SnapshotMergeOptions', 'CommonMergeOptions', 'MergeError', 'MergeErrorReason',
  // backup repositories
  'Repository', 'openBackend', 'createKeyFile', 'RepoError', 'RepoErrorReason', 'KeySource', 'ScryptParams', 'LockTiming', 'ManifestEntry', 'ManifestHeader', 'ManifestRead', 'GarbageReport', 'RepoCallOptions', 'DamagedBackup', 'GetOptions',
  'RepositoryCreateOptions', 'RepositoryOpenOptions', 'ReserveOptions', 'BackupSummary', 'PutResult', 'BackupSession', 'VerifyProblem', 'VerifyReport', 'RemovedChunks', 'Backend', 'ObjectInfo', 'BackendCallOptions', 'PutChunkOptions', 'PutOptions',
  // pool events, replication
  'PoolWaitOptions', 'PoolEvent', 'PoolEventType', 'PoolState', 'LowWaterMarkEvent', 'ModeEvent', 'NeedsCheckEvent', 'MetadataLowEvent', 'OtherPoolEvent', 'derivePoolEvents', 'poolState',
  'replicate', 'defaultReplicateStateFile', 'DEFAULT_REPLICATE_STATE_DIR', 'DEFAULT_SNAPSHOT_IDS', 'ReplicateOptions', 'CycleReport', 'SnapshotIdRange', 'PoolWaitResult', 'WaitOptions', 'DmStatusWithInfo', 'EventWaitOptions',
  'AbortError', 'ActivateOptions', 'ActiveThin', 'Bytes', 'CheckCounts', 'CheckOptions', 'CheckPhase',
  'CheckProblem', 'CheckProgress', 'CheckReport', 'CorruptionKind', 'CreateSnapOptions',
  'DATA_BLOCK_SIZE_MULTIPLE', 'DEFAULT_STATE_DIR', 'DataAddressing', 'DataBlocks', 'DataRegion',
  'DataSource', 'DeltaExtent', 'DeltaFormat', 'DeltaKind', 'DeltaOptions', 'DeltaProgress', 'DeltaStats',
  'DeltaSubject', 'DevNum', 'DeviceArg', 'DeviceDetails', 'DeviceId', 'DeviceMapper', 'DeviceMapperOptions',
  'DeviceRef', 'DeviceUsage', 'DmDeviceInfo', 'DmIoctlError', 'DmListEntry', 'DmParseError', 'DmTarget',
  'DmVersion', 'DmthinError', 'DumpFormat', 'DumpOptions', 'DumpProgress', 'ErrorFields', 'IdentityJson',
  'ImageSendOptions', 'Key', 'LiveMetadata', 'LvmThinVolume', 'MAX_DATA_BLOCK_SIZE', 'MAX_THIN_ID',
  'METADATA_BLOCK_SIZE', 'MIN_DATA_BLOCK_SIZE', 'Mapping', 'MappingRun', 'MetaBlocks', 'MetadataError',
  'MetadataSnapError', 'MetadataSnapshot', 'MetadataSnapshotUse', 'NativeDataSource',
  'NativeDataSourceOptions', 'NoSpacePolicy', 'OpenMetadataOptions', 'OpenOptions', 'PoolDiscard',
  'PoolMessage', 'PoolMessageName', 'PoolMode', 'PoolSendOptions', 'ProblemSeverity', 'ReceiveOptions',
  'ReceiveProgress', 'ReceiveResult', 'ReceiveState', 'ReceiveWritable', 'RmapOptions', 'RmapRun',
  'SECTOR_SIZE', 'Sectors', 'SendOptions', 'SendProgress', 'SendProgressEvent', 'SendStreamOptions',
  'SendSummary', 'SnapshotIdentity', 'SpaceMapKind', 'SpaceMapRoot', 'StateEntry', 'StateRead', 'StatusOptions',
  'StreamError', 'StreamErrorReason', 'StreamHeader', 'Superblock', 'SystemCallError', 'THIN_POOL_FEATURES',
  'THIN_POOL_TARGET', 'THIN_TARGET', 'TargetVersion', 'ThinDevice', 'ThinId', 'ThinMetadata',
  'ThinMetadataOptions', 'ThinPool', 'ThinPoolCreateOptions', 'ThinPoolFeature', 'ThinPoolStatus',
  'ThinPoolStatusWorking', 'ThinPoolTable', 'ThinPoolTableArgs', 'ThinStatus', 'ThinTable', 'ThinTableArgs',
  'UsageError', 'UsageOptions', 'VirtualBlock', 'WalkOptions', 'WalkProgress', 'WriteDeltaOptions',
  'ZeroMethod', 'bytes', 'changedBlocks', 'checkMetadata', 'dataBlocks', 'dataBlocksToSectors',
  'defaultStateFile', 'devNumOf', 'devPathOf', 'deviceUsage', 'dump', 'findLvmThin', 'metaBlocks',
  'offlinePoolId', 'openFailureReport', 'parsePoolMessage', 'parseThinPoolStatus', 'parseThinPoolTable',
  'parseThinStatus', 'parseThinTable', 'readState', 'receive', 'receiveStream', 'reportFails', 'rmap', 'sectors',
  'sectorsToBytes', 'send', 'sendStream', 'thinPoolTarget', 'thinTarget', 'withMetadataSnapshot',
  'writeDelta',
  // backups of thin snapshots (issue 12)
  'backup', 'chunkSizeFor', 'MAX_CHUNK_BYTES', 'BackupOptions', 'PoolBackupOptions', 'ImageBackupOptions', 'BackupProgress', 'BackupResult', 'BackupSource',
  'restore', 'RestoreOptions', 'RestoreProgress', 'RestoreResult', 'defaultRestoreStateFile', 'readRestoreState', 'DEFAULT_RESTORE_STATE_DIR',
  'RestoreState', 'RestoreEntry', 'FileStamp', 'prune', 'selectKept', 'PruneOptions', 'PrunePolicy', 'PruneResult',
];

const UNSTABLE = [
  'DmEventPoller',
  'BLOCK_SIZE', 'Block', 'BlockSource', 'BlockType', 'BlockWriter', 'BlockWriterInfo',
  'BlockWriterOpenOptions', 'BtreeNode', 'BtreeWalkOptions', 'Cmd', 'DiscardMethod', 'DmSyncTransport',
  'DIGEST_SEGMENT_BYTES', 'DmTransport', 'EndRecord', 'FORMAT_VERSION', 'FORMAT_VERSIONS', 'IndexEntry', 'IoStats', 'MAX_DATA_BYTES', 'MemoryBlockSource',
  'NativeBlockSource', 'RecordBuffers', 'RecordType', 'RunBatch', 'SpaceMap', 'StreamEncoder',
  'StreamHeaderInit', 'StreamRecord', 'StreamVerifier', 'THIN_SUPERBLOCK_MAGIC', 'TreeContext',
  'VerifiedStream', 'VerifierOptions', 'VirtualKey', 'WriteSegment', 'ZeroOutMethod', 'blockChecksum', 'blockTypeOf',
  'btreeLookup', 'crc32c', 'parseSuperblock', 'verifyChecksum', 'walkLeaves',
];

/** Internals the main entry used to export (issue 9): they must stay out of it. */
const INTERNALS_NOT_IN_MAIN = ['BtreeNode', 'walkLeaves', 'StreamEncoder', 'ExtentStore', 'writeState', 'formatLsTable', 'crc32c', 'MemoryBlockSource'];

const ENTRIES = ['index', 'unstable'].map((e) => join(ROOT, 'src', `${e}.ts`));
const program = ts.createProgram(ENTRIES, {
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.CommonJS,
  strict: true,
  types: ['node'],
  lib: ['lib.es2023.d.ts', 'lib.esnext.disposable.d.ts', 'lib.esnext.asynciterable.d.ts'],
  noEmit: true,
});
const checker = program.getTypeChecker();

/** [every exported name, the names that are runtime values], both sorted. */
function exportsOf(file: string): { all: string[]; values: string[] } {
  const sf = program.getSourceFile(file);
  if (!sf) throw new Error(`not in the program: ${file}`);
  const mod = checker.getSymbolAtLocation(sf);
  if (!mod) throw new Error(`not a module: ${file}`);
  const syms = checker.getExportsOfModule(mod);
  const isValue = (s: ts.Symbol): boolean => {
    const t = s.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(s) : s;
    // An `export type { X }` of a class is a type-only alias: no runtime value.
    if (s.declarations?.some((d) => ts.isTypeOnlyImportOrExportDeclaration(d))) return false;
    return (t.flags & ts.SymbolFlags.Value) !== 0;
  };
  return { all: syms.map((s) => s.name).sort(), values: syms.filter(isValue).map((s) => s.name).sort() };
}

const sorted = (xs: string[]): string[] => [...xs].sort();

describe('export lists', () => {
  const main = exportsOf(ENTRIES[0]);
  const unstable = exportsOf(ENTRIES[1]);

  test('dmthin exports exactly the pinned names', () => {
    expect(main.all).toEqual(sorted(MAIN));
  });

  test('dmthin/unstable exports exactly the pinned names', () => {
    expect(unstable.all).toEqual(sorted(UNSTABLE));
  });

  test('internals are not in the main entry, and no name is in both', () => {
    for (const n of INTERNALS_NOT_IN_MAIN) expect(main.all).not.toContain(n);
    expect(main.all.filter((n) => unstable.all.includes(n))).toEqual([]);
  });

  test('at runtime each entry carries exactly its value exports', () => {
    const runtimeMain = Object.keys(require('../../src/index')).filter((k) => k !== '__esModule').sort();
    const runtimeUnstable = Object.keys(require('../../src/unstable')).filter((k) => k !== '__esModule').sort();
    expect(main.values.length).toBeGreaterThan(40);
    expect(runtimeMain).toEqual(main.values);
    expect(runtimeUnstable).toEqual(unstable.values);
  });

  test('the shipped typings carry no @internal member', () => {
    // Declarations emitted in memory with the build's own tsconfig.json, as `npm run build` writes dist/*.d.ts.
    const cfg = ts.getParsedCommandLineOfConfigFile(join(ROOT, 'tsconfig.json'), {}, { ...ts.sys, onUnRecoverableConfigFileDiagnostic: () => {} });
    if (!cfg) throw new Error('cannot read tsconfig.json');
    expect(cfg.options.stripInternal).toBe(true);
    const dts = new Map<string, string>();
    const p = ts.createProgram(ENTRIES, { ...cfg.options, emitDeclarationOnly: true, declarationMap: false, noEmit: false });
    p.emit(undefined, (name, text) => {
      if (name.endsWith('.d.ts')) dts.set(name, text);
    });
    const internalSrc = (ts.sys.readFile(join(ROOT, 'src', 'pool', 'thin-pool.ts')) ?? '').match(/@internal/g) ?? [];
    expect(internalSrc.length).toBeGreaterThan(0); // there is something to strip
    expect(dts.size).toBeGreaterThan(50);
    const leaked = [...dts].filter(([, text]) => text.includes('@internal')).map(([name]) => name);
    expect(leaked).toEqual([]);
    // What @internal marks is really gone, not only its tag.
    const pool = [...dts].find(([name]) => name.endsWith('pool/thin-pool.d.ts'))?.[1] ?? '';
    expect(pool).toContain('class MetadataSnapshot');
    expect(pool).not.toMatch(/\breadRoot\(/);
  });

  test('package.json maps dmthin and dmthin/unstable to the built entries', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
    expect(pkg.exports['.']).toEqual({ types: './dist/index.d.ts', default: './dist/index.js' });
    expect(pkg.exports['./unstable']).toEqual({ types: './dist/unstable.d.ts', default: './dist/unstable.js' });
    expect(pkg.main).toBe('dist/index.js');
  });
});
