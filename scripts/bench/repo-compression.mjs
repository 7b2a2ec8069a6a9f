#!/usr/bin/env node
// Measures the chunk compression candidates of the backup repository
// (docs/repository.md, "Compression") on real-looking data: a volume image
// made of this machine's files (executables, libraries, documentation) laid
// out as a filesystem would, with already-compressed files and unwritten
// (zero) regions, cut into 64 KiB chunks as the repository stores them.
// Usage: node scripts/bench/repo-compression.mjs [MiB=96]
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { brotliCompressSync, brotliDecompressSync, constants as zc, deflateRawSync, inflateRawSync } from 'node:zlib';

const TOTAL = (Number(process.argv[2]) || 96) << 20;
const CHUNK = 64 << 10;

function* files(dir) {
  let ents;
  try { ents = readdirSync(dir, { withFileTypes: true }); } catch { return; }
  ents.sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const e of ents) {
    const p = join(dir, e.name);
    if (e.isDirectory()) yield* files(p);
    else if (e.isFile()) yield p;
  }
}

// Round-robin over sources so the image mixes kinds as a root filesystem does.
const sources = ['/usr/bin', '/usr/lib/x86_64-linux-gnu', '/usr/share/doc', '/usr/share/locale', '/usr/include'].map((d) => files(d));
const image = Buffer.alloc(TOTAL);
let pos = 0;
let i = 0;
while (pos < TOTAL) {
  const it = sources[i++ % sources.length];
  const r = it.next();
  if (r.done) continue;
  let data;
  try { if (statSync(r.value).size > 8 << 20) continue; data = readFileSync(r.value); } catch { continue; }
  data.copy(image, pos, 0, Math.min(data.length, TOTAL - pos));
  pos += data.length;
  pos = Math.ceil(pos / 4096) * 4096; // file data starts on filesystem blocks
  if (i % 50 === 0) pos += 64 << 10; // an unwritten region now and then
}
const chunks = [];
for (let o = 0; o < TOTAL; o += CHUNK) chunks.push(image.subarray(o, o + CHUNK));

const candidates = [
  ['deflate:1', (b) => deflateRawSync(b, { level: 1 }), inflateRawSync],
  ['deflate:3', (b) => deflateRawSync(b, { level: 3 }), inflateRawSync],
  ['deflate:6', (b) => deflateRawSync(b, { level: 6 }), inflateRawSync],
  ['deflate:9', (b) => deflateRawSync(b, { level: 9 }), inflateRawSync],
  ...[1, 3, 4, 5, 7].map((q) => [`brotli:${q}`, (b) => brotliCompressSync(b, { params: { [zc.BROTLI_PARAM_QUALITY]: q, [zc.BROTLI_PARAM_SIZE_HINT]: b.length } }), brotliDecompressSync]),
];
console.log(`node ${process.version}, ${(TOTAL / 2 ** 20).toFixed(0)} MiB image in ${chunks.length} chunks of ${CHUNK / 1024} KiB`);
console.log('codec      ratio  compress MiB/s  decompress MiB/s  (per CPU second)');
for (const [name, c, d] of candidates) {
  let stored = 0;
  // CPU time, not wall time: the figures then hold on a loaded machine.
  const cpu = () => { const u = process.cpuUsage(); return u.user + u.system; };
  const t0 = cpu();
  const out = chunks.map((b) => { const z = c(b); stored += Math.min(z.length, b.length); return z; });
  const t1 = cpu();
  for (const z of out) d(z);
  const t2 = cpu();
  const mibs = (us) => (TOTAL / 2 ** 20 / (us / 1e6)).toFixed(0);
  console.log(`${name.padEnd(10)} ${(TOTAL / stored).toFixed(2).padStart(5)}  ${mibs(t1 - t0).padStart(14)}  ${mibs(t2 - t1).padStart(16)}`);
}
