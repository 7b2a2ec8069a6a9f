/**
 * The random pools of scripts/fixtures/random-pool.mjs, for the tests that
 * use them, and what thin_dump (the reference, not dmthin) says they map.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT, runOracle, tempImage, type TempFile } from './fixtures';

const GENERATOR = join(REPO_ROOT, 'scripts', 'fixtures', 'random-pool.mjs');

export interface RandomPool {
  seed: number;
  devices: number[];
  nrDataBlocks: number;
  heldRoot: number | null;
  heldDevices: number[];
  ops: string[];
}

/** xml: thin_restore only; snap: shared subtrees too; held: and a held metadata snapshot. */
export type RandomPoolKind = 'xml' | 'snap' | 'held';
export const RANDOM_POOL_ARGS: Record<RandomPoolKind, string[]> = { xml: [], snap: ['--snapshots'], held: ['--snapshots', '--held'] };

/** `bounded`: every virtual block under 2^22, so each device fits a sparse file (--bounded). */
export function makeRandomPool(seed: number, kind: RandomPoolKind, { bounded = false } = {}): { img: TempFile; pool: RandomPool } {
  const img = tempImage(Buffer.alloc(0), `random-${kind}-${seed}.bin`);
  const args = [...RANDOM_POOL_ARGS[kind], ...(bounded ? ['--bounded'] : [])];
  const r = spawnSync(process.execPath, [GENERATOR, '--seed', String(seed), '--out', img.path, ...args], { encoding: 'utf8' });
  if (r.status !== 0) {
    img.cleanup();
    throw new Error(`random-pool.mjs --seed ${seed} ${args.join(' ')} failed: ${r.stderr}`);
  }
  return { img, pool: JSON.parse(r.stdout) as RandomPool };
}

/** The attributes of one XML start tag. */
export function xmlAttrs(tag: string): Record<string, string> {
  return Object.fromEntries([...tag.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
}

/**
 * Each device's mappings as thin_dump prints them (`-m`: the held metadata
 * snapshot's): virtual block -> data block. Virtual blocks past 2^53 are
 * left out (no device size reaches them).
 */
export function referenceMappings(image: string, held = false): Map<number, Map<number, number>> {
  const r = runOracle('thin_dump', [...(held ? ['-m'] : []), image]);
  if (r.status !== 0) throw new Error(`thin_dump ${held ? '-m ' : ''}${image} failed: ${r.stderr}`);
  const out = new Map<number, Map<number, number>>();
  for (const m of r.stdout.matchAll(/<device [^>]*>([\s\S]*?)<\/device>/g)) {
    const blocks = new Map<number, number>();
    for (const e of m[1].matchAll(/<(range|single)_mapping [^>]*>/g)) {
      const a = xmlAttrs(e[0]);
      const [origin, data, length] = e[1] === 'range' ? [a.origin_begin, a.data_begin, a.length] : [a.origin_block, a.data_block, '1'];
      if (BigInt(origin) > BigInt(Number.MAX_SAFE_INTEGER)) continue;
      for (let i = 0; i < Number(length); i++) blocks.set(Number(origin) + i, Number(data) + i);
    }
    out.set(Number(xmlAttrs(m[0].slice(0, m[0].indexOf('>'))).dev_id), blocks);
  }
  return out;
}
