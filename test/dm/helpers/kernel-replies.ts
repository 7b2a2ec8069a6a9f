/**
 * Bytes the kernel returns in a dm ioctl's result area, for tests that script
 * the dm transport (no kernel).
 */
import { TARGET_SPEC, align8 } from '../../../src/dm/ioctl';

/** DM_TABLE_STATUS-style dm_target_spec records: `next` is measured from the first spec. */
export function statusResults(lines: { start: number; length: number; type: string; params: string }[]): Buffer {
  const parts: Buffer[] = [];
  let off = 0;
  for (const l of lines) {
    const size = align8(TARGET_SPEC.size + Buffer.byteLength(l.params) + 1);
    const r = Buffer.alloc(size);
    r.writeBigUInt64LE(BigInt(l.start), 0);
    r.writeBigUInt64LE(BigInt(l.length), 8);
    off += size;
    r.writeUInt32LE(off, TARGET_SPEC.next);
    r.write(l.type, TARGET_SPEC.target_type);
    r.write(l.params, TARGET_SPEC.size);
    parts.push(r);
  }
  return Buffer.concat(parts);
}
