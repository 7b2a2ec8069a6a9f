/**
 * `dmthin/unstable`: building blocks below the public API, for advanced users
 * (raw metadata blocks, btrees and space maps, the stream format's codecs,
 * direct block writes, a device-mapper transport to test against). Unlike
 * `dmthin`, these names and their shapes may change in any release, minor and
 * patch ones included: pin an exact version if you use them. The list is
 * pinned by test/api/exports.test.ts.
 *
 * @module dmthin/unstable
 */

// Metadata blocks: sources, checksums, btrees, space maps, the superblock.
export { BLOCK_SIZE, Block, MemoryBlockSource, NativeBlockSource } from './pdata/block-source';
export type { BlockSource, IoStats } from './pdata/block-source';
export { BlockType, blockTypeOf, crc32c, blockChecksum, verifyChecksum } from './pdata/checksum';
export { BtreeNode, walkLeaves, lookup as btreeLookup } from './pdata/btree';
export type { WalkOptions as BtreeWalkOptions, TreeContext } from './pdata/btree';
export { SpaceMap } from './pdata/space-map';
export type { IndexEntry } from './pdata/space-map';
export { RunBatch } from './thin/mappings';
export type { VirtualKey } from './thin/mappings';
export { parseSuperblock, THIN_SUPERBLOCK_MAGIC } from './thin/superblock';

// The stream format (docs/stream-format.md): records, encoder, verifier.
export { StreamEncoder } from './stream/format/encoder';
export type { StreamHeaderInit } from './stream/format/encoder';
export { RecordBuffers, StreamVerifier } from './stream/format/verifier';
export type { StreamRecord, VerifiedStream, VerifierOptions } from './stream/format/verifier';
export { DIGEST_SEGMENT_BYTES, FORMAT_VERSION, FORMAT_VERSIONS, RecordType, MAX_DATA_BYTES } from './stream/format/records';
export type { EndRecord } from './stream/format/records';

// Direct block writes (what receive writes a target with).
export { BlockWriter } from './native/block-writer';
export type { BlockWriterOpenOptions, BlockWriterInfo, WriteSegment, DiscardMethod, ZeroOutMethod } from './native/block-writer';

// A DeviceMapper transport (DeviceMapperOptions.transport): run against a fake kernel in tests.
export { Cmd } from './dm/ioctl';
export type { DmTransport, DmSyncTransport } from './dm/device-mapper';
export type { DmEventPoller } from './dm/event-wait';
