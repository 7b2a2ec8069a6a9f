/**
 * Offline pools for the backup/restore tests, made by thin_restore (0.9.0)
 * from XML written here, plus a sparse data image whose every used data
 * block holds the pattern of its number (test/stream/helpers.ts), except
 * the blocks listed as zero blocks (left unwritten: they read as zeros).
 * What each snapshot reads is computed from this model alone (never from
 * dmthin's readers), so restores are compared with an independent answer.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { oraclePath } from '../helpers/fixtures';
import { patternBlock } from '../stream/helpers';

/** Virtual block -> data block. */
export type DeviceMap = Map<number, number>;

export interface PoolModel {
  /** Sectors per data block. */
  dataBlockSize: number;
  nrDataBlocks: number;
  devices: Map<number, DeviceMap>;
  /** Data blocks left unwritten in the data image (they read as zeros). */
  zeroBlocks: Set<number>;
}

export interface PoolImages {
  metadata: string;
  data: string;
  model: PoolModel;
  blockBytes: number;
}

/** A map from runs: [virtualBegin, dataBegin, length]... */
export function runs(...r: [number, number, number][]): DeviceMap {
  const m: DeviceMap = new Map();
  for (const [v, d, n] of r) for (let i = 0; i < n; i++) m.set(v + i, d + i);
  return m;
}

/** A copy of `m` with changes: set (virtual -> data) and unmapped virtual blocks. */
export function edit(m: DeviceMap, set: DeviceMap, unmap: number[] = []): DeviceMap {
  const out = new Map(m);
  for (const [v, d] of set) out.set(v, d);
  for (const v of unmap) out.delete(v);
  return out;
}

function xmlOf(p: PoolModel): string {
  const lines = [`<superblock uuid="" time="${p.devices.size}" transaction="${p.devices.size}" flags="0" version="2" data_block_size="${p.dataBlockSize}" nr_data_blocks="${p.nrDataBlocks}">`];
  let t = 0;
  for (const [id, m] of [...p.devices].sort((a, b) => a[0] - b[0])) {
    lines.push(`  <device dev_id="${id}" mapped_blocks="${m.size}" transaction="${t}" creation_time="${t}" snap_time="${t}">`);
    for (const [v, d] of [...m].sort((a, b) => a[0] - b[0])) lines.push(`    <single_mapping origin_block="${v}" data_block="${d}" time="${t}"/>`);
    lines.push('  </device>');
    t++;
  }
  lines.push('</superblock>');
  return lines.join('\n') + '\n';
}

/** Writes the metadata (thin_restore) and data images of a model into `dir`. */
export function makePool(dir: string, name: string, p: PoolModel): PoolImages {
  const tool = oraclePath('thin_restore');
  if (!tool) throw new Error('thin_restore (thin-provisioning-tools) is needed to build the backup test pools');
  const xml = join(dir, `${name}.xml`);
  const metadata = join(dir, `${name}.meta`);
  const data = join(dir, `${name}.data`);
  writeFileSync(xml, xmlOf(p));
  const fd = openSync(metadata, 'w');
  ftruncateSync(fd, 4096 * 1024);
  closeSync(fd);
  const r = spawnSync(tool, ['-q', '-i', xml, '-o', metadata], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`thin_restore failed: ${r.stderr}`);
  const blockBytes = p.dataBlockSize * 512;
  const dfd = openSync(data, 'w');
  try {
    ftruncateSync(dfd, p.nrDataBlocks * blockBytes);
    const used = new Set<number>();
    for (const m of p.devices.values()) for (const d of m.values()) used.add(d);
    for (const d of used) if (!p.zeroBlocks.has(d)) writeSync(dfd, patternBlock(d, blockBytes), 0, blockBytes, d * blockBytes);
  } finally {
    closeSync(dfd);
  }
  return { metadata, data, model: p, blockBytes };
}

/** What device `devId` reads as over `deviceSize` bytes, from the model. */
export function deviceBytes(p: PoolImages, devId: number, deviceSize: number): Buffer {
  const out = Buffer.alloc(deviceSize);
  const m = p.model.devices.get(devId)!;
  for (const [v, d] of m) {
    const at = v * p.blockBytes;
    if (at >= deviceSize || p.model.zeroBlocks.has(d)) continue;
    patternBlock(d, p.blockBytes).copy(out, at, 0, Math.min(p.blockBytes, deviceSize - at));
  }
  return out;
}

export function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}
