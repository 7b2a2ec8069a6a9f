/**
 * dmthin: Linux device-mapper thin provisioning for Node.js.
 */
export * from './errors';
export * from './units';
export { BLOCK_SIZE, Block, MemoryBlockSource, NativeBlockSource } from './pdata/io-engine';
export type { BlockSource, IoStats, OpenOptions } from './pdata/io-engine';
export { BlockType, blockTypeOf, crc32c, blockChecksum, verifyChecksum } from './pdata/checksum';
export { BtreeNode, walkLeaves, lookup as btreeLookup, maxEntriesFor } from './pdata/btree';
export type { WalkOptions as BtreeWalkOptions, TreeContext, Key } from './pdata/btree';
export { SpaceMap, bitmapEntry, ENTRIES_PER_BITMAP } from './pdata/space-map';
export type { SpaceMapRoot, SpaceMapKind, IndexEntry } from './pdata/space-map';
export { parseSuperblock, THIN_SUPERBLOCK_MAGIC } from './thin/superblock';
export type { Superblock } from './thin/superblock';
export type { DeviceDetails } from './thin/device-details';
export { RunBatch } from './thin/mappings';
export type { Mapping, MappingRun, VirtualBlock, WalkProgress } from './thin/mappings';
export { ThinMetadata } from './thin/metadata';
export type { ThinMetadataOptions, WalkOptions } from './thin/metadata';
export { dump } from './thin/dump';
export { writeDelta } from './thin/delta-format';
export type { DeltaFormat, WriteDeltaOptions, DeltaSubject } from './thin/delta-format';
export type { DeltaExtent, DeltaKind, DeltaOptions, DeltaProgress, DeltaStats } from './thin/delta';
export type { DumpFormat, DumpOptions, DumpProgress } from './thin/dump';
export { deviceUsage, formatLsTable, lsJson, parseLsFields, LS_FIELDS, DEFAULT_LS_FIELDS, formatDiskUnit } from './thin/ls';
export type { DeviceUsage, UsageOptions, LsField } from './thin/ls';
export * from './dm';
export { ThinPool, MetadataSnapshot, isMessageError } from './pool/thin-pool';
export type { ThinPoolCreateOptions, CreateSnapOptions, ActiveThin } from './pool/thin-pool';
export { ThinDevice } from './pool/thin-device';
export type { ActivateOptions } from './pool/thin-device';
export { devNumOf, devPathOf } from './pool/block-devices';
