/**
 * dmthin: Linux device-mapper thin provisioning for Node.js.
 *
 * The stable public API: thin metadata (read-only) and the library functions
 * behind dump, ls, delta, rmap and check; live pools and thin devices;
 * device-mapper control; send/receive streams; errors; units. Every name is
 * listed here on purpose (test/api/exports.test.ts pins the list). Building
 * blocks kept for advanced users and for tests live behind `dmthin/unstable`
 * (src/unstable.ts), which may change in any release.
 *
 * @module dmthin
 */

// Errors: every error dmthin throws is a DmthinError (Node's shape: code, errno, syscall, path).
export { DmthinError, SystemCallError, DmIoctlError, DmParseError, MetadataError, MetadataSnapError, StreamError, UsageError, AbortError, MergeError, NameLookupError, SetupError } from './errors';
export type { ErrorFields, CorruptionKind, StreamErrorReason, MergeErrorReason, NameLookupReason, SetupProblem } from './errors';

// Units: branded numbers, so sectors cannot be passed where blocks are meant.
export { SECTOR_SIZE, METADATA_BLOCK_SIZE, sectors, bytes, dataBlocks, metaBlocks, sectorsToBytes, dataBlocksToSectors } from './units';
export type { Sectors, Bytes, DataBlocks, MetaBlocks } from './units';

// Thin metadata (read-only) and the library functions behind the commands.
export { ThinMetadata } from './thin/metadata';
export type { ThinMetadataOptions, WalkOptions } from './thin/metadata';
export type { OpenOptions } from './pdata/block-source';
export type { SpaceMapKind, SpaceMapRoot } from './pdata/space-map';
export type { Key } from './pdata/btree';
export type { Superblock } from './thin/superblock';
export type { DeviceDetails } from './thin/device-details';
export type { Mapping, MappingRun, VirtualBlock, WalkProgress } from './thin/mappings';
export { dump } from './thin/dump';
export type { SinkTarget } from './output/sink';
export type { DumpFormat, DumpOptions, DumpProgress } from './thin/dump';
export { writeDelta } from './thin/delta-format';
export type { DeltaFormat, WriteDeltaOptions, DeltaSubject } from './thin/delta-format';
export type { DeltaExtent, DeltaKind, DeltaOptions, DeltaProgress, DeltaStats } from './thin/delta';
export { deviceUsage } from './thin/ls';
export type { DeviceUsage, UsageOptions } from './thin/ls';
export { rmap } from './thin/rmap';
export type { DataRegion, RmapRun, RmapOptions } from './thin/rmap';
export { checkMetadata, openFailureReport, reportFails } from './thin/check';
export type { CheckOptions, CheckReport, CheckProblem, CheckCounts, CheckPhase, CheckProgress, ProblemSeverity } from './thin/check';

// Live pools and thin devices.
export { ThinPool, MetadataSnapshot } from './pool/thin-pool';
export type { ThinPoolCreateOptions, CreateSnapOptions, ActiveThin, OpenMetadataOptions, LiveMetadata, MetadataSnapshotUse, PoolWaitOptions, PoolWaitResult, ReserveOptions } from './pool/thin-pool';
export { derivePoolEvents, poolState } from './pool/events';
export type { PoolEvent, PoolEventType, PoolState, LowWaterMarkEvent, ModeEvent, NeedsCheckEvent, MetadataLowEvent, OtherPoolEvent } from './pool/events';
export { ThinDevice } from './pool/thin-device';
export type { ActivateOptions } from './pool/thin-device';
export { changedBlocks, withMetadataSnapshot } from './pool/live-metadata';
export { findLvmThin } from './pool/lvm';
export type { LvmThinVolume, LvmPoolName } from './pool/lvm';

// Device-mapper control and the thin-pool / thin targets.
export { DeviceMapper } from './dm/device-mapper';
export type { DeviceMapperOptions, DmDeviceInfo, StatusOptions, WaitOptions, DmStatusWithInfo } from './dm/device-mapper';
export type { EventWaitOptions } from './dm/event-wait';
export type { DeviceId, DeviceRef, DevNum, DmListEntry, DmTarget, DmVersion, TargetVersion } from './dm/ioctl';
export { devNumOf, devPathOf } from './dm/block-devices';
export type { DeviceArg } from './dm/targets/args';
export {
  THIN_POOL_TARGET,
  THIN_POOL_FEATURES,
  MIN_DATA_BLOCK_SIZE,
  MAX_DATA_BLOCK_SIZE,
  DATA_BLOCK_SIZE_MULTIPLE,
  MAX_THIN_ID,
  PoolMessage,
  thinPoolTarget,
  parseThinPoolTable,
  parseThinPoolStatus,
  parsePoolMessage,
} from './dm/targets/thin-pool';
export type {
  ThinPoolFeature,
  ThinPoolTableArgs,
  ThinPoolTable,
  ThinPoolStatus,
  ThinPoolStatusWorking,
  PoolMode,
  PoolDiscard,
  NoSpacePolicy,
  ThinId,
  PoolMessageName,
} from './dm/targets/thin-pool';
export { THIN_TARGET, thinTarget, parseThinTable, parseThinStatus } from './dm/targets/thin';
export type { ThinTableArgs, ThinTable, ThinStatus } from './dm/targets/thin';

// Continuous replication (docs/replication.md).
export { replicate, defaultReplicateStateFile, DEFAULT_REPLICATE_STATE_DIR, DEFAULT_SNAPSHOT_IDS } from './ops/replicate';
export type { ReplicateOptions, CycleReport, SnapshotIdRange } from './ops/replicate';

// Send/receive streams (docs/stream-format.md).
export { send } from './ops/send';
export type { SendOptions, PoolSendOptions, ImageSendOptions, SendProgressEvent } from './ops/send';
export { sendStream } from './stream/send/send-stream';
export type { SendStreamOptions, SendProgress, SendSummary } from './stream/send/send-stream';
export { offlinePoolId } from './stream/send/plan';
// Backup repositories (docs/repository.md).
export { Repository, openBackend } from './repo/repository';
export type {
  KeySource, ScryptParams, LockTiming, ManifestEntry, ManifestHeader, ManifestRead, GarbageReport, RepoCallOptions, PutChunkOptions,
  RepositoryCreateOptions, RepositoryOpenOptions, BackupSummary, PutResult, BackupSession, VerifyProblem, VerifyReport, RemovedChunks, DamagedBackup,
} from './repo/repository';
export { createKeyFile } from './repo/keys';
export type { Backend, ObjectInfo, BackendCallOptions, GetOptions, PutOptions } from './repo/backend';
export { RepoError } from './errors';
export type { RepoErrorReason } from './errors';
// Merging a snapshot back into its origin (docs/merge.md).
export { mergeIntoExternalOrigin, mergeSnapshot } from './ops/merge';
export type { MergeResult, MergeProgress, ExternalMergeOptions, SnapshotMergeOptions, CommonMergeOptions } from './ops/merge';
export { NativeDataSource } from './stream/send/data-source';
export type { DataSource, DataAddressing, NativeDataSourceOptions } from './stream/send/data-source';
export { receive, receiveStream } from './ops/receive';
export type { ReceiveOptions, ReceiveProgress, ReceiveResult, ReceiveWritable } from './ops/receive';
export { readState, defaultStateFile, DEFAULT_STATE_DIR } from './stream/receive/state';
export type { ReceiveState, StateEntry, IdentityJson, StateRead } from './stream/receive/state';
export type { ZeroMethod } from './stream/receive/target';
export type { SnapshotIdentity, StreamHeader } from './stream/format/records';

// Backups of thin snapshots into a repository, restore, prune (docs/backup.md).
export { backup, chunkSizeFor, MAX_CHUNK_BYTES } from './ops/backup';
export type { BackupOptions, PoolBackupOptions, ImageBackupOptions, BackupProgress, BackupResult, BackupSource } from './ops/backup';
export { restore } from './ops/restore';
export type { RestoreOptions, RestoreProgress, RestoreResult } from './ops/restore';
export { defaultRestoreStateFile, readRestoreState, DEFAULT_RESTORE_STATE_DIR } from './ops/restore-state';
export type { RestoreState, RestoreEntry, FileStamp } from './ops/restore-state';
export { prune, selectKept } from './ops/prune';
export type { PruneOptions, PrunePolicy, PruneResult } from './ops/prune';
