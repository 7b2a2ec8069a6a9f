// Deliberate corruptions of dm-thin metadata images, for negative tests.
//
// Every corruption takes a clean image and returns a corrupted copy plus a
// description of the fault. Checksums (and, where the fault would otherwise
// drag in a second one, space-map counts) are recomputed so that only the
// intended fault is present; `audit()` below is a small independent checker
// that the tests use to prove exactly that.
//
// The parser here is deliberately separate from src/ and from the fixture
// generator: it is test code and must not share bugs with what it tests.

// ---------------------------------------------------------------- checksums

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export const SALT = { superblock: 160774, btree: 121107, bitmap: 240779, index: 160478 } as const;
export type BlockType = keyof typeof SALT;

export const BLOCK_SIZE = 4096;
const MAGIC = 27022010n;
const PER_BITMAP = 16320;

function rawCrc(b: Buffer): number {
  let c = 0xffffffff;
  for (let i = 4; i < b.length; i++) c = CRC_TABLE[(c ^ b[i]) & 0xff] ^ (c >>> 8);
  return c >>> 0;
}

/** The stored checksum a block needs for a given type. */
export function checksumFor(b: Buffer, type: BlockType): number {
  return (rawCrc(b) ^ SALT[type]) >>> 0;
}

export function seal(b: Buffer, type: BlockType): void {
  b.writeUInt32LE(checksumFor(b, type), 0);
}

/** Which block type's salt makes the stored checksum valid, or null. */
export function blockType(b: Buffer): BlockType | null {
  const salt = (b.readUInt32LE(0) ^ rawCrc(b)) >>> 0;
  for (const [k, v] of Object.entries(SALT)) if (v === salt) return k as BlockType;
  return null;
}

// ---------------------------------------------------------------- parsing

export function blk(img: Buffer, b: number): Buffer {
  return img.subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE);
}

const num = (v: bigint): number => {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`value ${v} too large`);
  return Number(v);
};

export interface SmRoot {
  nrBlocks: number;
  nrAllocated: number;
  bitmapRoot: number;
  refCountRoot: number;
}

export interface Superblock {
  version: number;
  time: number;
  transId: bigint;
  heldRoot: number;
  dataSm: SmRoot;
  metaSm: SmRoot;
  mappingRoot: number;
  detailsRoot: number;
  dataBlockSize: number;
  metadataBlockSize: number;
}

function smRoot(b: Buffer, off: number): SmRoot {
  return {
    nrBlocks: num(b.readBigUInt64LE(off)),
    nrAllocated: num(b.readBigUInt64LE(off + 8)),
    bitmapRoot: num(b.readBigUInt64LE(off + 16)),
    refCountRoot: num(b.readBigUInt64LE(off + 24)),
  };
}

/** Superblock fields, without validation. */
export function superblock(img: Buffer, at = 0): Superblock {
  const b = blk(img, at);
  return {
    version: b.readUInt32LE(0x28),
    time: b.readUInt32LE(0x2c),
    transId: b.readBigUInt64LE(0x30),
    heldRoot: num(b.readBigUInt64LE(0x38)),
    dataSm: smRoot(b, 0x40),
    metaSm: smRoot(b, 0xc0),
    mappingRoot: num(b.readBigUInt64LE(0x140)),
    detailsRoot: num(b.readBigUInt64LE(0x148)),
    dataBlockSize: b.readUInt32LE(0x150),
    metadataBlockSize: b.readUInt32LE(0x154),
  };
}

export interface NodeView {
  block: number;
  buf: Buffer;
  flags: number;
  blocknr: bigint;
  nr: number;
  max: number;
  vsize: number;
  leaf: boolean;
  key(i: number): bigint;
  valueOff(i: number): number;
  child(i: number): number;
}

/** Header and accessors of a btree node, without validation. */
export function node(img: Buffer, b: number): NodeView {
  const buf = blk(img, b);
  const max = buf.readUInt32LE(20);
  const vsize = buf.readUInt32LE(24);
  const valueOff = (i: number): number => 32 + 8 * max + i * vsize;
  return {
    block: b,
    buf,
    flags: buf.readUInt32LE(4),
    blocknr: buf.readBigUInt64LE(8),
    nr: buf.readUInt32LE(16),
    max,
    vsize,
    leaf: buf.readUInt32LE(4) === 2,
    key: (i) => buf.readBigUInt64LE(32 + 8 * i),
    valueOff,
    child: (i) => num(buf.readBigUInt64LE(valueOff(i))),
  };
}

export function maxEntries(vsize: number): number {
  const n = Math.floor((BLOCK_SIZE - 32) / (8 + vsize));
  return n - (n % 3);
}

export type TreeKind = 'details' | 'top' | 'bottom';

export interface NodeInfo {
  block: number;
  tree: TreeKind;
  /** device id for bottom-level nodes */
  dev?: bigint;
  /** 1 = root */
  level: number;
  leaf: boolean;
  nr: number;
  parent?: number;
  parentIndex?: number;
}

/** Every node of the live trees of a clean image (each shared node once). */
export function listNodes(img: Buffer): NodeInfo[] {
  const sb = superblock(img);
  const out: NodeInfo[] = [];
  const seen = new Set<number>();
  const walk = (b: number, tree: TreeKind, level: number, dev?: bigint, parent?: number, parentIndex?: number): void => {
    if (seen.has(b)) return;
    seen.add(b);
    const n = node(img, b);
    out.push({ block: b, tree, dev, level, leaf: n.leaf, nr: n.nr, parent, parentIndex });
    for (let i = 0; i < n.nr; i++) {
      if (!n.leaf) walk(n.child(i), tree, level + 1, dev, b, i);
      else if (tree === 'top') walk(n.child(i), 'bottom', 1, n.key(i), b, i);
    }
  };
  walk(sb.detailsRoot, 'details', 1);
  walk(sb.mappingRoot, 'top', 1);
  return out;
}

// ---------------------------------------------------------------- space-map edits

function bitmapGet(bm: Buffer, e: number): number {
  const byte = 16 + 8 * Math.floor(e / 32) + ((2 * (e % 32)) >> 3);
  const sh = (2 * (e % 32)) & 7;
  const raw = (bm[byte] >> sh) & 3;
  return ((raw & 1) << 1) | (raw >> 1); // bit s is the high bit
}

function bitmapPut(bm: Buffer, e: number, v: number): void {
  const byte = 16 + 8 * Math.floor(e / 32) + ((2 * (e % 32)) >> 3);
  const sh = (2 * (e % 32)) & 7;
  const raw = ((v & 1) << 1) | (v >> 1);
  bm[byte] = (bm[byte] & ~(3 << sh)) | (raw << sh);
}

/** Location of index entry i: the block holding it, the offset, and that block's type. */
function indexEntry(img: Buffer, which: 'metadata' | 'data', i: number): { buf: Buffer; off: number; type: BlockType } {
  const sb = superblock(img);
  if (which === 'metadata') return { buf: blk(img, sb.metaSm.bitmapRoot), off: 16 + 16 * i, type: 'index' };
  let n = node(img, sb.dataSm.bitmapRoot);
  for (;;) {
    let j = -1;
    for (let k = 0; k < n.nr; k++) if (n.key(k) <= BigInt(i)) j = k;
    if (j < 0) throw new Error(`no data index entry ${i}`);
    if (n.leaf) return { buf: n.buf, off: n.valueOff(j), type: 'btree' };
    n = node(img, n.child(j));
  }
}

/** Reference count of a block (0..2 from the bitmap; 3 means "see the overflow tree"). */
export function smGet(img: Buffer, which: 'metadata' | 'data', b: number): number {
  const ie = indexEntry(img, which, Math.floor(b / PER_BITMAP));
  return bitmapGet(blk(img, num(ie.buf.readBigUInt64LE(ie.off))), b % PER_BITMAP);
}

/**
 * Set a reference count between 0 and 2 (no overflow-tree edits), keeping
 * the index entry's nr_free and the superblock's nr_allocated consistent.
 */
export function smSet(img: Buffer, which: 'metadata' | 'data', b: number, count: number): void {
  const old = smGet(img, which, b);
  if (old > 2 || count > 2) throw new Error('smSet handles counts 0..2 only');
  if (old === count) return;
  const ie = indexEntry(img, which, Math.floor(b / PER_BITMAP));
  const bmAt = num(ie.buf.readBigUInt64LE(ie.off));
  const bm = blk(img, bmAt);
  bitmapPut(bm, b % PER_BITMAP, count);
  seal(bm, 'bitmap');
  const delta = old === 0 ? -1 : count === 0 ? 1 : 0;
  if (delta) {
    ie.buf.writeUInt32LE(ie.buf.readUInt32LE(ie.off + 8) + delta, ie.off + 8);
    seal(ie.buf, ie.type);
    const sbb = blk(img, 0);
    const off = which === 'metadata' ? 0xc8 : 0x48;
    sbb.writeBigUInt64LE(sbb.readBigUInt64LE(off) - BigInt(delta), off);
    seal(sbb, 'superblock');
  }
}

/**
 * Drop one reference to a bottom-level subtree: a node whose count falls to
 * 0 releases its children (nodes, or data blocks for leaves). Counts must
 * stay within 0..2 (no overflow-tree entries involved).
 */
function releaseSubtree(img: Buffer, b: number): void {
  const c = smGet(img, 'metadata', b);
  smSet(img, 'metadata', b, c - 1);
  if (c - 1 > 0) return;
  const n = node(img, b);
  for (let i = 0; i < n.nr; i++) {
    if (!n.leaf) releaseSubtree(img, n.child(i));
    else {
      const data = num(n.buf.readBigUInt64LE(n.valueOff(i)) >> 24n);
      smSet(img, 'data', data, smGet(img, 'data', data) - 1);
    }
  }
}

/** Point child i of internal node b at `target`, keeping both space maps exact. */
function redirectChild(img: Buffer, b: number, i: number, target: number): number {
  const n = node(img, b);
  const old = n.child(i);
  n.buf.writeBigUInt64LE(BigInt(target), n.valueOff(i));
  seal(n.buf, 'btree');
  smSet(img, 'metadata', target, smGet(img, 'metadata', target) + 1);
  releaseSubtree(img, old);
  return old;
}


// ---------------------------------------------------------------- more edits (check)

/** The device-details value offset of device `dev` in the live details tree. */
function detailsEntry(img: Buffer, dev: bigint): { n: NodeView; off: number } {
  let n = node(img, superblock(img).detailsRoot);
  for (;;) {
    let j = -1;
    for (let k = 0; k < n.nr; k++) if (n.key(k) <= dev) j = k;
    if (j < 0) throw new Error(`no details for device ${dev}`);
    if (n.leaf) {
      if (n.key(j) !== dev) throw new Error(`no details for device ${dev}`);
      return { n, off: n.valueOff(j) };
    }
    n = node(img, n.child(j));
  }
}

/** Add `delta` to a device's mapped_blocks. */
function adjustMapped(img: Buffer, dev: bigint, delta: number): void {
  const { n, off } = detailsEntry(img, dev);
  n.buf.writeBigUInt64LE(n.buf.readBigUInt64LE(off) + BigInt(delta), off);
  seal(n.buf, 'btree');
}

/** Which devices' trees contain node b (a shared node belongs to several). */
function devicesUsing(img: Buffer, b: number): bigint[] {
  const sb = superblock(img);
  const out: bigint[] = [];
  const top = (x: number): void => {
    const n = node(img, x);
    for (let i = 0; i < n.nr; i++) {
      if (!n.leaf) top(n.child(i));
      else if (reaches(n.child(i), b)) out.push(n.key(i));
    }
  };
  const reaches = (x: number, target: number): boolean => {
    if (x === target) return true;
    const n = node(img, x);
    if (n.leaf) return false;
    for (let i = 0; i < n.nr; i++) if (reaches(n.child(i), target)) return true;
    return false;
  };
  top(sb.mappingRoot);
  return out;
}

/** Data blocks mapped by a leaf's entries [from, to). */
function leafData(n: NodeView, from: number, to: number): number[] {
  const out: number[] = [];
  for (let i = from; i < to; i++) out.push(num(n.buf.readBigUInt64LE(n.valueOff(i)) >> 24n));
  return out;
}

/**
 * Cut a non-root node of a bottom-level tree down to `keep` entries, keeping
 * everything else exact: the dropped subtrees (or mappings) are released in
 * both space maps and every device using the node has its mapped_blocks
 * lowered. Only the fill rule is left broken.
 */
function cutNode(img: Buffer, t: NodeInfo, keep: number): number {
  const n = node(img, t.block);
  const users = devicesUsing(img, t.block);
  let dropped = 0;
  const countLeaves = (x: number): number => {
    const m = node(img, x);
    if (m.leaf) return m.nr;
    let s = 0;
    for (let i = 0; i < m.nr; i++) s += countLeaves(m.child(i));
    return s;
  };
  for (let i = keep; i < n.nr; i++) {
    if (n.leaf) {
      const data = leafData(n, i, i + 1)[0];
      // Data blocks count once per leaf node, however many devices share the leaf.
      smSet(img, 'data', data, smGet(img, 'data', data) - 1);
      dropped++;
    } else {
      dropped += countLeaves(n.child(i));
      releaseSubtree(img, n.child(i));
    }
  }
  n.buf.writeUInt32LE(keep, 16);
  seal(n.buf, 'btree');
  for (const d of users) adjustMapped(img, d, -dropped);
  return dropped;
}

/** A bottom-level overflow-free block pick: a node used once, or a data block mapped once. */
function dataBlockWithCount(img: Buffer, count: number): { data: number; leaf: number } {
  for (const t of listNodes(img)) {
    if (t.tree !== 'bottom' || !t.leaf) continue;
    const n = node(img, t.block);
    for (const data of leafData(n, 0, n.nr)) if (smGet(img, 'data', data) === count) return { data, leaf: t.block };
  }
  throw new Error(`no data block with count ${count}`);
}

function metadataNodeWithCount(img: Buffer, count: number): NodeInfo {
  const t = listNodes(img).find((x) => x.tree === 'bottom' && smGet(img, 'metadata', x.block) === count);
  if (!t) throw new Error(`no bottom-level node with count ${count}`);
  return t;
}

/** The first overflow ref-count entry (block, value offset, leaf) of a space map. */
function overflowEntry(img: Buffer, which: 'metadata' | 'data'): { block: number; leaf: NodeView; off: number } {
  const sb = superblock(img);
  let n = node(img, which === 'metadata' ? sb.metaSm.refCountRoot : sb.dataSm.refCountRoot);
  while (!n.leaf) n = node(img, n.child(0));
  for (let i = 0; i < n.nr; i++) {
    const b = num(n.key(i));
    if (smGet(img, which, b) === 3) return { block: b, leaf: n, off: n.valueOff(i) };
  }
  throw new Error(`no ${which} ref-count tree entry in use`);
}

function freeBlock(img: Buffer, which: 'metadata' | 'data'): number {
  const sb = superblock(img);
  const limit = which === 'metadata' ? Math.min(sb.metaSm.nrBlocks, img.length / BLOCK_SIZE) : sb.dataSm.nrBlocks;
  for (let b = limit - 1; b > 0; b--) if (smGet(img, which, b) === 0) return b;
  throw new Error(`no free ${which} block`);
}

// ---------------------------------------------------------------- corruptions

export type CorruptionKind =
  | 'node-checksum'
  | 'node-blocknr'
  | 'superblock-magic'
  | 'superblock-byte-flip'
  | 'truncate-after-superblock'
  | 'truncate-mid-trees'
  | 'cycle-self'
  | 'cycle-ancestor'
  | 'child-beyond-device'
  | 'keys-out-of-order'
  | 'child-outside-parent-range'
  | 'leaf-value-size-16'
  | 'max-entries-not-div3'
  | 'max-entries-wrong'
  | 'nr-entries-over-max'
  | 'node-flags-3'
  | 'node-flags-0'
  | 'wrong-block-type'
  | 'data-block-beyond-end'
  | 'details-only-device'
  | 'mapping-only-device'
  | 'depth-bomb'
  | 'metadata-block-size'
  | 'superblock-version'
  | 'underfull-leaf'
  | 'underfull-leaf-0'
  | 'underfull-internal'
  | 'underfull-internal-0'
  | 'metadata-sm-raised'
  | 'metadata-sm-lowered'
  | 'metadata-sm-in-use-free'
  | 'data-sm-raised'
  | 'data-sm-lowered'
  | 'data-sm-in-use-free'
  | 'metadata-refcount-raised'
  | 'metadata-refcount-lowered'
  | 'data-refcount-raised'
  | 'data-refcount-lowered'
  | 'metadata-nr-free'
  | 'data-nr-free'
  | 'metadata-nr-allocated'
  | 'data-nr-allocated'
  | 'metadata-leak'
  | 'data-leak'
  | 'mapped-blocks';

export interface Fault {
  kind: CorruptionKind;
  /** the block that was changed (or where the image was cut) */
  block: number;
  description: string;
  /** extra facts: the device id, the bad pointer, the chain, ... */
  detail?: Record<string, unknown>;
}

export interface Corrupted {
  image: Buffer;
  fault: Fault;
}

const pick = (img: Buffer, pred: (n: NodeInfo) => boolean, what: string): NodeInfo => {
  const n = listNodes(img).find(pred);
  if (!n) throw new Error(`image has no ${what}`);
  return n;
};

const bottomLeaf = (img: Buffer, minNr = 1): NodeInfo =>
  pick(img, (n) => n.tree === 'bottom' && n.leaf && n.nr >= minNr, `bottom-level leaf with >= ${minNr} entries`);

/** Rewrite a node with new geometry, keeping its entries (values truncated/zero-padded). */
function relayout(n: NodeView, max: number, vsize: number, nr = n.nr): void {
  const keys = Array.from({ length: n.nr }, (_, i) => n.key(i));
  const vals = Array.from({ length: n.nr }, (_, i) => Buffer.from(n.buf.subarray(n.valueOff(i), n.valueOff(i) + n.vsize)));
  const flags = n.flags;
  const blocknr = n.blocknr;
  n.buf.fill(0);
  n.buf.writeUInt32LE(flags, 4);
  n.buf.writeBigUInt64LE(blocknr, 8);
  n.buf.writeUInt32LE(nr, 16);
  n.buf.writeUInt32LE(max, 20);
  n.buf.writeUInt32LE(vsize, 24);
  keys.forEach((k, i) => {
    n.buf.writeBigUInt64LE(k, 32 + 8 * i);
    vals[i].copy(n.buf, 32 + 8 * max + i * vsize, 0, Math.min(vsize, vals[i].length));
  });
}

type CorruptFn = (img: Buffer) => Corrupted;

function make(kind: CorruptionKind, fn: (img: Buffer) => { block: number; description: string; detail?: Record<string, unknown> }): CorruptFn {
  return (clean: Buffer) => {
    const image = Buffer.from(clean);
    const r = fn(image);
    return { image, fault: { kind, ...r } };
  };
}

/** All corruptions by kind. Each throws if the image lacks a suitable target. */
export const corruptions: Record<CorruptionKind, CorruptFn> = {
  'node-checksum': make('node-checksum', (img) => {
    const t = bottomLeaf(img);
    const n = node(img, t.block);
    n.buf[n.valueOff(0)] ^= 0x01; // data block of the first mapping; checksum left stale
    return { block: t.block, description: 'one byte of a bottom-level leaf flipped, checksum not updated' };
  }),

  'node-blocknr': make('node-blocknr', (img) => {
    const t = bottomLeaf(img);
    const n = node(img, t.block);
    n.buf.writeBigUInt64LE(BigInt(t.block + 1), 8);
    seal(n.buf, 'btree');
    return { block: t.block, description: `node says blocknr ${t.block + 1}; checksum valid`, detail: { claimed: t.block + 1 } };
  }),

  'superblock-magic': make('superblock-magic', (img) => {
    const b = blk(img, 0);
    b.writeUInt32LE(b.readUInt32LE(0x20) ^ 0x100, 0x20);
    seal(b, 'superblock');
    return { block: 0, description: 'superblock magic changed; checksum valid' };
  }),

  'superblock-byte-flip': make('superblock-byte-flip', (img) => {
    blk(img, 0)[0x2c] ^= 0x01; // low byte of `time`
    return { block: 0, description: 'superblock time byte flipped; checksum stale' };
  }),

  'truncate-after-superblock': (clean) => ({
    image: Buffer.from(clean.subarray(0, BLOCK_SIZE)),
    fault: { kind: 'truncate-after-superblock', block: 1, description: 'image cut after block 0' },
  }),

  'truncate-mid-trees': (clean) => {
    const blocks = listNodes(clean).map((n) => n.block).sort((a, b) => a - b);
    const cut = blocks[Math.floor(blocks.length / 2)];
    return {
      image: Buffer.from(clean.subarray(0, cut * BLOCK_SIZE)),
      fault: {
        kind: 'truncate-mid-trees',
        block: cut,
        description: `image cut at block ${cut}: ${blocks.length - blocks.indexOf(cut)} of ${blocks.length} tree nodes lie beyond the end`,
      },
    };
  },

  'cycle-self': make('cycle-self', (img) => {
    const t = pick(img, (n) => n.tree === 'bottom' && !n.leaf, 'internal node in a bottom-level tree');
    const n = node(img, t.block);
    const old = redirectChild(img, t.block, n.nr - 1, t.block);
    return {
      block: t.block,
      description: `last child pointer of internal node ${t.block} points to itself (space maps adjusted: the node counts 2, the displaced subtree ${old} is released)`,
      detail: { displaced: old },
    };
  }),

  'cycle-ancestor': make('cycle-ancestor', (img) => {
    const t = pick(img, (n) => n.tree === 'bottom' && !n.leaf && n.level === 2, 'internal node at level 2 (a 3-level tree)');
    const n = node(img, t.block);
    const old = redirectChild(img, t.block, n.nr - 1, t.parent!);
    return {
      block: t.block,
      description: `last child pointer of internal node ${t.block} points to its parent (the root, ${t.parent}; space maps adjusted, displaced subtree ${old} released)`,
      detail: { ancestor: t.parent, displaced: old },
    };
  }),

  'child-beyond-device': make('child-beyond-device', (img) => {
    const t = pick(img, (n) => n.tree === 'bottom' && !n.leaf, 'internal node in a bottom-level tree');
    const n = node(img, t.block);
    const target = img.length / BLOCK_SIZE + 1000;
    const old = n.child(0);
    n.buf.writeBigUInt64LE(BigInt(target), n.valueOff(0));
    seal(n.buf, 'btree');
    releaseSubtree(img, old);
    return {
      block: t.block,
      description: `first child pointer of ${t.block} is ${target}, beyond the device (displaced subtree ${old} released in the space maps)`,
      detail: { target, displaced: old },
    };
  }),

  'keys-out-of-order': make('keys-out-of-order', (img) => {
    const t = bottomLeaf(img, 3);
    const n = node(img, t.block);
    const [k1, k2] = [n.key(1), n.key(2)];
    n.buf.writeBigUInt64LE(k2, 32 + 8);
    n.buf.writeBigUInt64LE(k1, 32 + 16);
    const v1 = Buffer.from(n.buf.subarray(n.valueOff(1), n.valueOff(2)));
    n.buf.copy(n.buf, n.valueOff(1), n.valueOff(2), n.valueOff(3));
    v1.copy(n.buf, n.valueOff(2));
    seal(n.buf, 'btree');
    return { block: t.block, description: `entries 1 and 2 of leaf ${t.block} swapped (keys ${k2}, ${k1})` };
  }),

  'child-outside-parent-range': make('child-outside-parent-range', (img) => {
    const t = pick(img, (n) => n.tree === 'bottom' && !n.leaf && n.nr >= 2, 'internal node with 2+ children');
    const n = node(img, t.block);
    const k = n.key(1);
    n.buf.writeBigUInt64LE(k + 1n, 32 + 8);
    seal(n.buf, 'btree');
    return {
      block: t.block,
      description: `key 1 of internal node ${t.block} raised from ${k} to ${k + 1n}: child ${n.child(1)} holds key ${k}, below its range`,
      detail: { child: n.child(1) },
    };
  }),

  'leaf-value-size-16': make('leaf-value-size-16', (img) => {
    const t = bottomLeaf(img);
    const n = node(img, t.block);
    if (n.nr > maxEntries(16)) throw new Error('leaf too full');
    relayout(n, maxEntries(16), 16);
    seal(n.buf, 'btree');
    return { block: t.block, description: 'mapping leaf rewritten with value_size 16 (max_entries 168, values zero-padded)' };
  }),

  'max-entries-not-div3': make('max-entries-not-div3', (img) => {
    const t = bottomLeaf(img);
    const n = node(img, t.block);
    relayout(n, 250, 8);
    seal(n.buf, 'btree');
    return { block: t.block, description: 'mapping leaf laid out with max_entries 250 (not a multiple of 3)' };
  }),

  'max-entries-wrong': make('max-entries-wrong', (img) => {
    const t = bottomLeaf(img);
    const n = node(img, t.block);
    relayout(n, 249, 8);
    seal(n.buf, 'btree');
    return { block: t.block, description: 'mapping leaf laid out with max_entries 249 (multiple of 3, fits, but not the formula value 252)' };
  }),

  'nr-entries-over-max': make('nr-entries-over-max', (img) => {
    const t = bottomLeaf(img);
    const n = node(img, t.block);
    n.buf.writeUInt32LE(n.max + 1, 16);
    seal(n.buf, 'btree');
    return { block: t.block, description: `nr_entries set to max_entries+1 = ${n.max + 1}` };
  }),

  'node-flags-3': make('node-flags-3', (img) => {
    const t = bottomLeaf(img);
    const n = node(img, t.block);
    n.buf.writeUInt32LE(3, 4);
    seal(n.buf, 'btree');
    return { block: t.block, description: 'leaf flags set to 3 (internal|leaf)' };
  }),

  'node-flags-0': make('node-flags-0', (img) => {
    const t = bottomLeaf(img);
    const n = node(img, t.block);
    n.buf.writeUInt32LE(0, 4);
    seal(n.buf, 'btree');
    return { block: t.block, description: 'leaf flags set to 0' };
  }),

  'wrong-block-type': make('wrong-block-type', (img) => {
    const t = bottomLeaf(img);
    seal(blk(img, t.block), 'bitmap');
    return { block: t.block, description: 'btree leaf sealed with the bitmap checksum salt (valid bitmap checksum)' };
  }),

  'data-block-beyond-end': make('data-block-beyond-end', (img) => {
    const sb = superblock(img);
    // A mapping whose data block is not in the overflow tree, so the data
    // space map can be fixed with a plain bitmap edit.
    for (const t of listNodes(img)) {
      if (t.tree !== 'bottom' || !t.leaf) continue;
      const n = node(img, t.block);
      for (let i = 0; i < n.nr; i++) {
        const v = n.buf.readBigUInt64LE(n.valueOff(i));
        const data = num(v >> 24n);
        const c = smGet(img, 'data', data);
        if (c < 1 || c > 2) continue;
        const bad = BigInt(sb.dataSm.nrBlocks);
        n.buf.writeBigUInt64LE((bad << 24n) | (v & 0xffffffn), n.valueOff(i));
        seal(n.buf, 'btree');
        smSet(img, 'data', data, c - 1);
        return {
          block: t.block,
          description: `mapping ${n.key(i)} of device ${t.dev} now points at data block ${bad} = nr_data_blocks (was ${data}; data sm adjusted)`,
          detail: { dev: t.dev, vblock: n.key(i), dataBlock: bad, oldDataBlock: data },
        };
      }
    }
    throw new Error('no suitable mapping');
  }),

  'details-only-device': make('details-only-device', (img) => {
    // Append a details entry for a new id at the right edge of the details tree.
    const sb = superblock(img);
    let n = node(img, sb.detailsRoot);
    while (!n.leaf) n = node(img, n.child(n.nr - 1));
    if (n.nr >= n.max) throw new Error('details leaf full');
    const id = n.nr ? n.key(n.nr - 1) + 1n : 1n;
    n.buf.writeBigUInt64LE(id, 32 + 8 * n.nr);
    const v = n.valueOff(n.nr);
    n.buf.fill(0, v, v + 24);
    n.buf.writeUInt32LE(n.nr + 1, 16);
    seal(n.buf, 'btree');
    return { block: n.block, description: `device ${id} added to the details tree only`, detail: { dev: id } };
  }),

  'mapping-only-device': make('mapping-only-device', (img) => {
    const t = pick(img, (x) => x.tree === 'details' && x.leaf && x.nr >= 1, 'details leaf');
    const n = node(img, t.block);
    const id = n.key(n.nr - 1);
    n.buf.writeBigUInt64LE(0n, 32 + 8 * (n.nr - 1));
    n.buf.fill(0, n.valueOff(n.nr - 1), n.valueOff(n.nr - 1) + 24);
    n.buf.writeUInt32LE(n.nr - 1, 16);
    seal(n.buf, 'btree');
    return { block: t.block, description: `device ${id} removed from the details tree, still in the mapping tree`, detail: { dev: id } };
  }),

  'depth-bomb': make('depth-bomb', (img) => {
    const CHAIN = 40;
    const sb = superblock(img);
    const top = pick(img, (x) => x.tree === 'top' && x.leaf && x.nr >= 1, 'top-level leaf');
    const tn = node(img, top.block);
    const dev = tn.key(0);
    const oldRoot = tn.child(0);
    const used = new Set(listNodes(img).map((x) => x.block));
    const free: number[] = [];
    const limit = Math.min(sb.metaSm.nrBlocks, img.length / BLOCK_SIZE);
    for (let b = 1; b < limit && free.length < CHAIN; b++) {
      if (!used.has(b) && smGet(img, 'metadata', b) === 0) free.push(b);
    }
    if (free.length < CHAIN) throw new Error('not enough free metadata blocks');
    free.forEach((b, i) => {
      const buf = blk(img, b);
      buf.fill(0);
      buf.writeUInt32LE(1, 4);
      buf.writeBigUInt64LE(BigInt(b), 8);
      buf.writeUInt32LE(1, 16);
      buf.writeUInt32LE(252, 20);
      buf.writeUInt32LE(8, 24);
      buf.writeBigUInt64LE(0n, 32);
      buf.writeBigUInt64LE(BigInt(i + 1 < CHAIN ? free[i + 1] : oldRoot), 32 + 8 * 252);
      seal(buf, 'btree');
      smSet(img, 'metadata', b, 1);
    });
    tn.buf.writeBigUInt64LE(BigInt(free[0]), tn.valueOff(0));
    seal(tn.buf, 'btree');
    return {
      block: free[0],
      description: `device ${dev}'s bottom tree now starts with a chain of ${CHAIN} one-entry internal nodes (metadata sm updated)`,
      detail: { dev, chain: free, depth: CHAIN + 1 },
    };
  }),

  'metadata-block-size': make('metadata-block-size', (img) => {
    const b = blk(img, 0);
    b.writeUInt32LE(16, 0x154);
    seal(b, 'superblock');
    return { block: 0, description: 'superblock metadata_block_size 16 sectors (8 KiB); checksum valid' };
  }),

  'superblock-version': make('superblock-version', (img) => {
    const b = blk(img, 0);
    b.writeUInt32LE(3, 0x28);
    seal(b, 'superblock');
    return { block: 0, description: 'superblock version 3; checksum valid' };
  }),

  'underfull-leaf': make('underfull-leaf', (img) => {
    const t = pick(img, (n) => n.tree === 'bottom' && n.leaf && n.level > 1, 'non-root bottom-level leaf');
    const keep = Math.floor(maxEntries(8) / 3) - 1;
    const dropped = cutNode(img, t, keep);
    return { block: t.block, description: `non-root leaf ${t.block} cut to ${keep} entries (below max/3 = ${keep + 1}); ${dropped} mappings released in the data sm and mapped_blocks`, detail: { keep } };
  }),

  'underfull-leaf-0': make('underfull-leaf-0', (img) => {
    const t = pick(img, (n) => n.tree === 'bottom' && n.leaf && n.level > 1, 'non-root bottom-level leaf');
    const dropped = cutNode(img, t, 0);
    return { block: t.block, description: `non-root leaf ${t.block} cut to 0 entries; ${dropped} mappings released`, detail: { keep: 0 } };
  }),

  'underfull-internal': make('underfull-internal', (img) => {
    const t = pick(img, (n) => n.tree === 'bottom' && !n.leaf && n.level > 1 && n.nr >= 2, 'non-root internal node');
    const keep = Math.min(Math.floor(maxEntries(8) / 3) - 1, node(img, t.block).nr - 1);
    const dropped = cutNode(img, t, keep);
    return { block: t.block, description: `non-root internal node ${t.block} cut to ${keep} entries; ${dropped} mappings released`, detail: { keep } };
  }),

  'underfull-internal-0': make('underfull-internal-0', (img) => {
    const t = pick(img, (n) => n.tree === 'bottom' && !n.leaf && n.level > 1, 'non-root internal node');
    const dropped = cutNode(img, t, 0);
    return { block: t.block, description: `non-root internal node ${t.block} cut to 0 entries; ${dropped} mappings released`, detail: { keep: 0 } };
  }),

  'metadata-sm-raised': make('metadata-sm-raised', (img) => {
    const t = metadataNodeWithCount(img, 1);
    smSet(img, 'metadata', t.block, 2);
    return { block: t.block, description: `metadata sm count of node ${t.block} raised 1 -> 2 in its bitmap` };
  }),

  'metadata-sm-lowered': make('metadata-sm-lowered', (img) => {
    const t = metadataNodeWithCount(img, 2);
    smSet(img, 'metadata', t.block, 1);
    return { block: t.block, description: `metadata sm count of shared node ${t.block} lowered 2 -> 1 in its bitmap` };
  }),

  'metadata-sm-in-use-free': make('metadata-sm-in-use-free', (img) => {
    const t = metadataNodeWithCount(img, 1);
    smSet(img, 'metadata', t.block, 0);
    return { block: t.block, description: `metadata sm count of node ${t.block} lowered 1 -> 0 (in use, counted free)` };
  }),

  'data-sm-raised': make('data-sm-raised', (img) => {
    const { data } = dataBlockWithCount(img, 1);
    smSet(img, 'data', data, 2);
    return { block: data, description: `data sm count of data block ${data} raised 1 -> 2` };
  }),

  'data-sm-lowered': make('data-sm-lowered', (img) => {
    const { data } = dataBlockWithCount(img, 2);
    smSet(img, 'data', data, 1);
    return { block: data, description: `data sm count of data block ${data} lowered 2 -> 1` };
  }),

  'data-sm-in-use-free': make('data-sm-in-use-free', (img) => {
    const { data } = dataBlockWithCount(img, 1);
    smSet(img, 'data', data, 0);
    return { block: data, description: `data sm count of mapped data block ${data} lowered 1 -> 0 (in use, counted free)` };
  }),

  'metadata-refcount-raised': make('metadata-refcount-raised', (img) => {
    const e = overflowEntry(img, 'metadata');
    const v = e.leaf.buf.readUInt32LE(e.off);
    e.leaf.buf.writeUInt32LE(v + 1, e.off);
    seal(e.leaf.buf, 'btree');
    return { block: e.block, description: `metadata ref-count tree entry of block ${e.block} raised ${v} -> ${v + 1}`, detail: { leaf: e.leaf.block } };
  }),

  'metadata-refcount-lowered': make('metadata-refcount-lowered', (img) => {
    const e = overflowEntry(img, 'metadata');
    const v = e.leaf.buf.readUInt32LE(e.off);
    e.leaf.buf.writeUInt32LE(v - 1, e.off);
    seal(e.leaf.buf, 'btree');
    return { block: e.block, description: `metadata ref-count tree entry of block ${e.block} lowered ${v} -> ${v - 1}`, detail: { leaf: e.leaf.block } };
  }),

  'data-refcount-raised': make('data-refcount-raised', (img) => {
    const e = overflowEntry(img, 'data');
    const v = e.leaf.buf.readUInt32LE(e.off);
    e.leaf.buf.writeUInt32LE(v + 1, e.off);
    seal(e.leaf.buf, 'btree');
    return { block: e.block, description: `data ref-count tree entry of data block ${e.block} raised ${v} -> ${v + 1}`, detail: { leaf: e.leaf.block } };
  }),

  'data-refcount-lowered': make('data-refcount-lowered', (img) => {
    const e = overflowEntry(img, 'data');
    const v = e.leaf.buf.readUInt32LE(e.off);
    e.leaf.buf.writeUInt32LE(v - 1, e.off);
    seal(e.leaf.buf, 'btree');
    return { block: e.block, description: `data ref-count tree entry of data block ${e.block} lowered ${v} -> ${v - 1}`, detail: { leaf: e.leaf.block } };
  }),

  'metadata-nr-free': make('metadata-nr-free', (img) => {
    // Every entry of the bitmap free, although blocks in it are in use (past-the-end entries count as free too).
    const ie = indexEntry(img, 'metadata', 0);
    const v = ie.buf.readUInt32LE(ie.off + 8);
    ie.buf.writeUInt32LE(PER_BITMAP, ie.off + 8);
    seal(ie.buf, ie.type);
    return { block: num(ie.buf.readBigUInt64LE(ie.off)), description: `metadata index entry 0 nr_free raised ${v} -> ${PER_BITMAP} (all free)` };
  }),

  'data-nr-free': make('data-nr-free', (img) => {
    const ie = indexEntry(img, 'data', 0);
    const v = ie.buf.readUInt32LE(ie.off + 8);
    const bm = num(ie.buf.readBigUInt64LE(ie.off));
    if (superblock(img).dataSm.nrAllocated === 0) throw new Error('no data block in use');
    ie.buf.writeUInt32LE(PER_BITMAP, ie.off + 8);
    seal(ie.buf, ie.type);
    return { block: bm, description: `data index entry 0 (bitmap ${bm}) nr_free raised ${v} -> ${PER_BITMAP} (all free)` };
  }),

  'metadata-nr-allocated': make('metadata-nr-allocated', (img) => {
    const b = blk(img, 0);
    const v = b.readBigUInt64LE(0xc8);
    b.writeBigUInt64LE(v - 3n, 0xc8);
    seal(b, 'superblock');
    return { block: 0, description: `superblock metadata sm nr_allocated lowered ${v} -> ${v - 3n}` };
  }),

  'data-nr-allocated': make('data-nr-allocated', (img) => {
    const b = blk(img, 0);
    const v = b.readBigUInt64LE(0x48);
    if (v < 1n) throw new Error('no data allocated');
    b.writeBigUInt64LE(v - 1n, 0x48);
    seal(b, 'superblock');
    return { block: 0, description: `superblock data sm nr_allocated lowered ${v} -> ${v - 1n}` };
  }),

  'metadata-leak': make('metadata-leak', (img) => {
    const b = freeBlock(img, 'metadata');
    smSet(img, 'metadata', b, 1);
    return { block: b, description: `free metadata block ${b} counted 1 (leaked)` };
  }),

  'data-leak': make('data-leak', (img) => {
    const b = freeBlock(img, 'data');
    smSet(img, 'data', b, 1);
    return { block: b, description: `free data block ${b} counted 1 (leaked)` };
  }),

  'mapped-blocks': make('mapped-blocks', (img) => {
    const t = pick(img, (x) => x.tree === 'details' && x.leaf && x.nr >= 1, 'details leaf');
    const n = node(img, t.block);
    const dev = n.key(0);
    adjustMapped(img, dev, 1);
    return { block: t.block, description: `device ${dev}'s mapped_blocks raised by 1`, detail: { dev } };
  }),
};

export const CORRUPTION_KINDS = Object.keys(corruptions) as CorruptionKind[];

/** Faults in what the pool counts (space maps, their hints, mapped_blocks): every tree stays intact. */
export const ACCOUNTING_KINDS: readonly CorruptionKind[] = [
  'metadata-sm-raised',
  'metadata-sm-lowered',
  'metadata-sm-in-use-free',
  'data-sm-raised',
  'data-sm-lowered',
  'data-sm-in-use-free',
  'metadata-refcount-raised',
  'metadata-refcount-lowered',
  'data-refcount-raised',
  'data-refcount-lowered',
  'metadata-nr-free',
  'data-nr-free',
  'metadata-nr-allocated',
  'data-nr-allocated',
  'metadata-leak',
  'data-leak',
  'mapped-blocks',
];

/** Non-root nodes below the minimum fill (nr_entries < max_entries / 3). */
export const UNDERFULL_KINDS: readonly CorruptionKind[] = ['underfull-leaf', 'underfull-leaf-0', 'underfull-internal', 'underfull-internal-0'];

export function corrupt(img: Buffer, kind: CorruptionKind): Corrupted {
  return corruptions[kind](img);
}

// ---------------------------------------------------------------- audit

export type ProblemKind =
  | 'superblock-checksum'
  | 'superblock-magic'
  | 'superblock-unsupported'
  | 'truncated'
  | 'beyond-device'
  | 'checksum'
  | 'block-type'
  | 'blocknr'
  | 'flags'
  | 'geometry'
  | 'value-size'
  | 'key-order'
  | 'key-range'
  | 'underfull'
  | 'cycle'
  | 'depth'
  | 'data-block-range'
  | 'device-id-sets';

export interface Problem {
  kind: ProblemKind;
  block?: number;
  message: string;
}

const MAX_DEPTH = 16;

/**
 * A compact structural checker: superblock(s), every node reachable from the
 * live and held roots (checksum, type, blocknr, flags, geometry, value size,
 * key order, key ranges given by the parent, fill, cycles, depth), data
 * blocks against nr_data_blocks, and the details/top-level id sets. It does
 * not check space-map counts. Returns [] for a clean image.
 */
export function audit(img: Buffer): Problem[] {
  const problems: Problem[] = [];
  const add = (kind: ProblemKind, message: string, block?: number): void => {
    problems.push({ kind, block, message });
  };
  const nrBlocks = Math.floor(img.length / BLOCK_SIZE);
  if (nrBlocks < 1) return [{ kind: 'truncated', message: 'no superblock' }];

  const checkSuper = (at: number): Superblock | null => {
    const b = blk(img, at);
    if (b.readUInt32LE(0) !== checksumFor(b, 'superblock')) {
      add('superblock-checksum', `superblock at ${at}: bad checksum`, at);
      return null;
    }
    if (b.readBigUInt64LE(8) !== BigInt(at)) add('blocknr', `superblock at ${at} says ${b.readBigUInt64LE(8)}`, at);
    if (b.readBigUInt64LE(0x20) !== MAGIC) {
      add('superblock-magic', `superblock at ${at}: bad magic`, at);
      return null;
    }
    const sb = superblock(img, at);
    if (sb.metadataBlockSize !== 8 || (sb.version !== 1 && sb.version !== 2)) {
      add('superblock-unsupported', `metadata_block_size ${sb.metadataBlockSize}, version ${sb.version}`, at);
      return null;
    }
    return sb;
  };

  const sb = checkSuper(0);
  if (!sb) return problems;
  if (sb.metaSm.nrBlocks > nrBlocks) add('truncated', `metadata sm has ${sb.metaSm.nrBlocks} blocks, device ${nrBlocks}`);
  const nrData = BigInt(sb.dataSm.nrBlocks);
  const valueSize: Record<TreeKind, number> = { details: 24, top: 8, bottom: 8 };
  const checked = new Set<number>();

  const walk = (
    b: number,
    tree: TreeKind,
    lo: bigint,
    hi: bigint | null,
    path: number[],
    isRoot: boolean,
    onLeafEntry: (n: NodeView, i: number) => void,
  ): void => {
    if (b >= nrBlocks) return add('beyond-device', `${tree} node ${b} beyond the device (${nrBlocks} blocks)`, b);
    if (path.includes(b)) return add('cycle', `${tree} node ${b} is its own ancestor`, b);
    if (path.length >= MAX_DEPTH) return add('depth', `${tree} tree deeper than ${MAX_DEPTH}`, b);
    const n = node(img, b);
    if (n.buf.readUInt32LE(0) !== checksumFor(n.buf, 'btree')) {
      const t = blockType(n.buf);
      return add(t ? 'block-type' : 'checksum', t ? `block ${b} is a ${t} block` : `bad checksum at ${b}`, b);
    }
    if (n.blocknr !== BigInt(b)) return add('blocknr', `node ${b} says ${n.blocknr}`, b);
    if (n.flags !== 1 && n.flags !== 2) return add('flags', `node ${b} flags ${n.flags}`, b);
    if (n.max !== maxEntries(n.vsize) || n.nr > n.max || 32 + n.max * (8 + n.vsize) > BLOCK_SIZE) {
      return add('geometry', `node ${b}: nr ${n.nr} max ${n.max} value_size ${n.vsize}`, b);
    }
    const want = n.leaf ? valueSize[tree] : 8;
    if (n.vsize !== want) return add('value-size', `node ${b}: value_size ${n.vsize}, expected ${want}`, b);
    if (!isRoot && n.nr < Math.floor(n.max / 3)) add('underfull', `node ${b}: ${n.nr} entries`, b);
    for (let i = 0; i < n.nr; i++) {
      const k = n.key(i);
      if (i > 0 && k <= n.key(i - 1)) add('key-order', `node ${b}: key ${i} (${k}) <= key ${i - 1}`, b);
      if (k < lo || (hi !== null && k >= hi)) add('key-range', `node ${b}: key ${k} outside [${lo}, ${hi ?? '-'})`, b);
    }
    const again = checked.has(b);
    checked.add(b);
    if (again) return; // shared subtree: checked once
    for (let i = 0; i < n.nr; i++) {
      if (n.leaf) onLeafEntry(n, i);
      else {
        const childHi = i + 1 < n.nr ? n.key(i + 1) : hi;
        walk(n.child(i), tree, n.key(i), childHi, [...path, b], false, onLeafEntry);
      }
    }
  };

  const trees = (s: Superblock): void => {
    const detailIds: bigint[] = [];
    const topIds: bigint[] = [];
    walk(s.detailsRoot, 'details', 0n, null, [], true, (n, i) => detailIds.push(n.key(i)));
    walk(s.mappingRoot, 'top', 0n, null, [], true, (n, i) => {
      topIds.push(n.key(i));
      walk(n.child(i), 'bottom', 0n, null, [], true, (m, j) => {
        const data = m.buf.readBigUInt64LE(m.valueOff(j)) >> 24n;
        if (data >= nrData) add('data-block-range', `block ${m.block}: data block ${data} >= ${nrData}`, m.block);
      });
    });
    const a = detailIds.map(String).sort().join(',');
    const c = topIds.map(String).sort().join(',');
    if (a !== c) add('device-id-sets', `details ids [${a}] differ from mapping-tree ids [${c}]`);
  };

  trees(sb);
  if (sb.heldRoot) {
    if (sb.heldRoot >= nrBlocks) add('beyond-device', `held root ${sb.heldRoot} beyond the device`, sb.heldRoot);
    else {
      const held = checkSuper(sb.heldRoot);
      if (held) trees(held);
    }
  }
  return problems;
}

/**
 * A copy of `img` with a metadata snapshot held, as reserve_metadata_snap
 * leaves it: block 0 copied to a free block (its blocknr that block's), and
 * block 0's held root pointing there. Reads through it (-m) see what block 0 holds.
 */
export function withHeldRoot(img: Buffer): { image: Buffer; held: number } {
  const image = Buffer.from(img);
  const held = freeBlock(image, 'metadata');
  const copy = blk(image, held);
  blk(image, 0).copy(copy);
  copy.writeBigUInt64LE(BigInt(held), 8);
  seal(copy, 'superblock');
  const b0 = blk(image, 0);
  b0.writeBigUInt64LE(BigInt(held), 0x38);
  seal(b0, 'superblock');
  return { image, held };
}
