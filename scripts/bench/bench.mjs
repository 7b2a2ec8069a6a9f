#!/usr/bin/env node
// dmthin vs the reference tools, in one run: builds large metadata images with
// thin_restore (cached in .bench-cache/), then times `dmthin dump` / `thin_dump`,
// `ls`, `delta`, `rmap` and `check` against their reference tool in interleaved
// rounds and prints median wall times, their ratio and peak RSS.
//
//   npm run bench [-- --mappings 1000000 --rounds 7 --data-blocks 4294967296 --only dump,ls] [--devices 70000]
//
// --mappings N     mappings of the bench image (1M by default; the goals are
//                  stated at 4M, 10M and 40M)
// --data-blocks N  data device size in blocks (default 2x the mappings); e.g.
//                  4294967296 (2^32): the origin's data blocks are spread over
//                  the whole device, so the data space map is that large too
// --only a,b       only these rows: dump, ls, rmap, delta, delta-shared,
//                  delta-no-same, check, check-shared (the shared image is
//                  built only when a row needs it), delta-no-same-shared (its
//                  own 1.5M-mapping origin + snapshot, whatever --mappings
//                  says), devices-dump, devices-ls,
//                  devices-ls-excl, devices-delta (an image of --devices small
//                  thin devices; the delta of two of them),
//                  send, receive, receive-piped (a fully mapped 1 GiB thin from
//                  file-backed images against dd with O_DIRECT, 1 MiB blocks),
//                  tiny (each command on examples/pool.bin, in ms over
//                  `node -e 0`), ls-nowalk (ls default fields on the bench and
//                  the devices image against `node -e 0` and thin_ls),
//                  backup (scripts/bench/backup.mjs: backup/restore vs dd),
//                  memory (peak RSS and time of dmthin's dump, ls, delta,
//                  check and rmap, against the 80 MiB goal; no reference run)
// --keep-env      time the commands with NODE_EXTRA_CA_CERTS if it is set
//                  (by default it is removed from their environment: see below)
// --scale A,B,...  the memory rows at each of these mapping counts (images
//                  built and cached as needed), e.g. 1000000,4000000,10000000,40000000,
//                  printed as one table: peak RSS, seconds and seconds per
//                  million mappings (flat when the time is linear)
import { spawnSync } from 'node:child_process';
import { closeSync, createWriteStream, existsSync, mkdirSync, openSync, readFileSync, readSync, statSync, writeFileSync, renameSync } from 'node:fs';
import { createRequire } from 'node:module';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cliNodeFlags as cliNodeFlagsOf } from './cli-flags.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const MAPPINGS = opt('mappings', 1_000_000);
const ROUNDS = opt('rounds', 7);
const DEVICES = opt('devices', 70_000);
const DATA_BLOCKS = opt('data-blocks', MAPPINGS * 2);
const onlyAt = args.indexOf('--only');
const ONLY = onlyAt >= 0 ? new Set(args[onlyAt + 1].split(',')) : null;
const wanted = (key) => !ONLY || ONLY.has(key);
const scaleAt = args.indexOf('--scale');
const SCALE = scaleAt >= 0 ? args[scaleAt + 1].split(',').map(Number) : null;
const cli = join(root, 'dist/cli/main.js');

function need(cmd) {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`]);
  if (r.status !== 0) {
    console.error(`bench: '${cmd}' is not installed (apt-get install thin-provisioning-tools)`);
    process.exit(1);
  }
}
['thin_restore', 'thin_dump', 'thin_ls', 'thin_delta', 'thin_rmap', 'thin_check'].forEach(need);
if (!existsSync(cli)) {
  console.error('bench: dist/ is missing; run `npm run build` first');
  process.exit(1);
}
// NODE_EXTRA_CA_CERTS makes every Node process parse that CA bundle before
// any JavaScript runs (with Debian's 140-certificate bundle: ~55 ms and
// 2-4 MiB per process on the 2-core bench machine, `node -e 0` 30 -> 85 ms).
// It is a setting of the machine, not dmthin's work, and a standard install
// has none: the timed commands run without it, and the bench says so.
// --keep-env keeps the environment as it is.
const KEEP_ENV = args.includes('--keep-env');
const childEnv = { ...process.env };
const droppedCaCerts = !KEEP_ENV && childEnv.NODE_EXTRA_CA_CERTS !== undefined;
if (droppedCaCerts) {
  delete childEnv.NODE_EXTRA_CA_CERTS;
  console.log('bench: NODE_EXTRA_CA_CERTS is set here; the timed commands run without it (Node parses that bundle at every start; --keep-env keeps it)');
}

// Node options of the installed `dmthin` command (its #! line).
const cliNodeFlags = cliNodeFlagsOf(cli);

// A deterministic generator (xorshift) so every run measures the same image.
function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 4294967296;
  };
}

/**
 * An origin and three snapshots, like a pool after a few rounds of backups:
 * the origin is mostly single mappings (random writes) with some runs; each
 * snapshot shares most of its blocks with the origin and has its own rewrites.
 */
async function makeImage(path, total, nrData = total * 2) {
  const xml = `${path}.xml`;
  const out = createWriteStream(xml);
  const w = (s) => (out.write(s) ? undefined : new Promise((r) => out.once('drain', r)));
  const r = rng(42);
  const perDev = Math.floor(total / 4);
  // Origin runs are packed on about 1.1x their blocks; on a data device larger
  // than the default they are spread over 80% of it (random gaps between
  // runs), so high data block numbers and a large data space map are used.
  const spread = nrData > total * 2 ? Math.floor((nrData * 0.8) / perDev) : 0;
  await w(`<superblock uuid="" time="3" transaction="12" data_block_size="128" nr_data_blocks="${nrData}">\n`);
  // Origin layout: list of [virt, data, len, time]
  const origin = [];
  let v = 0;
  let d = 0;
  let n = 0;
  while (n < perDev) {
    const len = r() < 0.6 ? 1 : Math.min(perDev - n, 2 + Math.floor(r() * 30));
    v += r() < 0.5 ? 0 : 1 + Math.floor(r() * 4);
    origin.push([v, d, len, Math.floor(r() * 3)]);
    v += len;
    d += len + (r() < 0.3 ? 1 : 0) + (spread > 1 ? Math.floor(r() * 2 * (spread - 1) * len) : 0);
    n += len;
  }
  if (d >= nrData) throw new Error(`bench: ${total} mappings do not fit on ${nrData} data blocks`);
  let nextData = Math.min(d + 10, nrData - 1);
  for (let dev = 0; dev < 4; dev++) {
    await w(`  <device dev_id="${dev}" mapped_blocks="${perDev}" transaction="${dev}" creation_time="${dev}" snap_time="3">\n`);
    for (const [ov, od, len, t] of origin) {
      if (dev > 0 && r() < 0.05) {
        // Rewritten after the snapshot: new data block(s), newer time.
        for (let i = 0; i < len; i++) await w(`    <single_mapping origin_block="${ov + i}" data_block="${nextData++ % nrData}" time="${dev}"/>\n`);
      } else if (len === 1) {
        await w(`    <single_mapping origin_block="${ov}" data_block="${od}" time="${t}"/>\n`);
      } else {
        await w(`    <range_mapping origin_begin="${ov}" data_begin="${od}" length="${len}" time="${t}"/>\n`);
      }
    }
    await w('  </device>\n');
  }
  await w('</superblock>\n');
  await new Promise((res) => out.end(res));
  // Metadata size: generous for the mappings plus the data space map (a
  // bitmap block per 16,320 data blocks), rounded to 4 MiB.
  const bytes = Math.ceil(((total / 100) * 4096 * 1.6 + (nrData / 16000) * 4096 * 1.1 + (8 << 20)) / (4 << 20)) * (4 << 20);
  writeFileSync(`${path}.tmp`, '');
  spawnSync('truncate', ['-s', String(bytes), `${path}.tmp`]);
  const t = spawnSync('thin_restore', ['-q', '-i', xml, '-o', `${path}.tmp`], { stdio: 'inherit' });
  if (t.status !== 0) throw new Error('thin_restore failed');
  renameSync(`${path}.tmp`, path);
}

/**
 * A pool as the kernel leaves it after a snapshot: one origin of `total`
 * mappings (restored), then create_snap and `writes` copy-on-write writes to
 * the snapshot, emulated with the fixture generator's kernel model so that
 * the two devices share every subtree but the changed paths.
 */
async function makeSharedImage(path, total, writes) {
  const xml = `${path}.xml`;
  const out = createWriteStream(xml);
  const w = (s) => (out.write(s) ? undefined : new Promise((r) => out.once('drain', r)));
  const r = rng(7);
  await w(`<superblock uuid="" time="0" transaction="1" data_block_size="128" nr_data_blocks="${total * 2}">\n`);
  await w(`  <device dev_id="0" mapped_blocks="${total}" transaction="0" creation_time="0" snap_time="0">\n`);
  let v = 0;
  for (let n = 0; n < total; n++) {
    v += r() < 0.5 ? 1 : 2;
    await w(`    <single_mapping origin_block="${v}" data_block="${n}" time="0"/>\n`);
  }
  await w('  </device>\n</superblock>\n');
  await new Promise((res) => out.end(res));
  const bytes = Math.ceil(((total / 100) * 4096 * 1.6 + (8 << 20)) / (4 << 20)) * (4 << 20);
  writeFileSync(`${path}.tmp`, '');
  spawnSync('truncate', ['-s', String(bytes), `${path}.tmp`]);
  if (spawnSync('thin_restore', ['-q', '-i', xml, '-o', `${path}.tmp`], { stdio: 'inherit' }).status !== 0) throw new Error('thin_restore failed');
  const { Transaction } = await import('../fixtures/lib/emulate.mjs');
  const { readFileSync } = await import('node:fs');
  const img = readFileSync(`${path}.tmp`);
  const t = new Transaction(img);
  t.createSnap(1, 0);
  for (let i = 0; i < writes; i++) t.write(1, 1 + Math.floor(r() * v));
  t.commit();
  writeFileSync(`${path}.tmp`, img);
  if (spawnSync('thin_check', ['-q', `${path}.tmp`]).status !== 0) throw new Error('thin_check failed on the emulated image');
  // thin_delta must read it too, and find the written blocks (and nothing else) changed.
  const d = spawnSync('thin_delta', ['--snap1', '0', '--snap2', '1', `${path}.tmp`], { maxBuffer: 1 << 30 });
  const changed = d.status === 0 ? (d.stdout.toString().match(/<(different|right_only)/g) ?? []).length : -1;
  if (changed < 1 || changed > writes) throw new Error(`thin_delta on the emulated image: exit ${d.status}, ${changed} changed ranges for ${writes} writes`);
  renameSync(`${path}.tmp`, path);
}

/**
 * Many small thin devices, as a pool of VM disks and their snapshots: groups
 * of an origin with a few mappings (singles and short runs) followed by up to
 * three snapshots that share its data blocks and each rewrote one of them;
 * every 100th device is empty. Each device gets its own one-leaf mapping tree
 * (thin_restore shares only the empty leaf), so the image is ~4 KiB a device.
 */
async function makeDevicesImage(path, nrDevices) {
  const xml = `${path}.xml`;
  const out = createWriteStream(xml);
  const w = (s) => (out.write(s) ? undefined : new Promise((r) => out.once('drain', r)));
  const r = rng(11);
  const nrData = nrDevices * 64;
  await w(`<superblock uuid="" time="5" transaction="${nrDevices}" data_block_size="128" nr_data_blocks="${nrData}">\n`);
  let nextData = 0;
  let origin = [];
  for (let dev = 0; dev < nrDevices; dev++) {
    let maps;
    if (dev % 100 === 99) maps = [];
    else if (dev % 4 !== 0 && origin.length > 0) {
      // A snapshot: the origin's mappings, one block rewritten at a newer time.
      maps = origin.map((m) => [...m]);
      const k = Math.floor(r() * maps.length);
      const [v, , len] = maps[k];
      maps.splice(k, 1, ...(len === 1 ? [] : [[v + 1, maps[k][1] + 1, len - 1, maps[k][3]]]), [v, nextData++, 1, 4]);
      maps.sort((a, b) => a[0] - b[0]);
    } else {
      maps = [];
      let v = Math.floor(r() * 64);
      const n = 1 + Math.floor(r() * 6);
      for (let i = 0; i < n; i++) {
        const len = r() < 0.6 ? 1 : 2 + Math.floor(r() * 8);
        maps.push([v, nextData, len, Math.floor(r() * 4)]);
        nextData += len + 1;
        v += len + 1 + Math.floor(r() * 100);
      }
      origin = maps;
    }
    const mapped = maps.reduce((n, m) => n + m[2], 0);
    let s = `  <device dev_id="${dev}" mapped_blocks="${mapped}" transaction="${dev}" creation_time="${dev % 5}" snap_time="${dev % 4 === 0 ? 5 : dev % 5}">\n`;
    for (const [v, d, len, t] of maps) {
      s += len === 1
        ? `    <single_mapping origin_block="${v}" data_block="${d}" time="${t}"/>\n`
        : `    <range_mapping origin_begin="${v}" data_begin="${d}" length="${len}" time="${t}"/>\n`;
    }
    await w(s + '  </device>\n');
  }
  await w('</superblock>\n');
  await new Promise((res) => out.end(res));
  if (nextData > nrData) throw new Error('bench: data device too small for the devices image');
  // A leaf per device, plus the details and top-level trees and space maps.
  const bytes = Math.ceil((nrDevices * 4096 * 1.1 + (16 << 20)) / (4 << 20)) * (4 << 20);
  writeFileSync(`${path}.tmp`, '');
  spawnSync('truncate', ['-s', String(bytes), `${path}.tmp`]);
  const t = spawnSync('thin_restore', ['-q', '-i', xml, '-o', `${path}.tmp`], { stdio: 'inherit' });
  if (t.status !== 0) throw new Error('thin_restore failed');
  renameSync(`${path}.tmp`, path);
}

function timed(cmd, argv) {
  // The CLI runs with its #! line's node options, as the installed command does.
  if (cmd === process.execPath && argv[0] === cli) argv = [...cliNodeFlags, ...argv];
  const hasTime = existsSync('/usr/bin/time');
  const full = hasTime ? ['/usr/bin/time', ['-f', '%e %M %U %S', cmd, ...argv]] : [cmd, argv];
  const t0 = process.hrtime.bigint();
  const r = spawnSync(full[0], full[1], { stdio: ['ignore', 'ignore', 'pipe'], maxBuffer: 1 << 24, env: childEnv });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed: ${r.stderr}`);
  let rssKiB = NaN;
  let cpu = NaN;
  if (hasTime) {
    const lines = r.stderr.toString().trim().split('\n');
    const f = lines[lines.length - 1].split(' ');
    rssKiB = Number(f[1]);
    cpu = Number(f[2]) + Number(f[3]);
  }
  return { wall, rssKiB, cpu };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};

/**
 * send/receive rows: a pool of one fully mapped 1 GiB thin (64 KiB blocks,
 * metadata restored with thin_restore) whose data image is 1 GiB of
 * deterministic pseudo-random bytes (AES-CTR of zeros: no zero pages for a
 * filesystem to skip). Throughput is compared with `dd iflag=direct bs=1M`
 * reading the same data image; the ratio is dd's time over dmthin's (≥ 1 is
 * faster than dd). Beside each, the best ratio this machine allows: send
 * puts every byte through the stream's digest (format version 3: BLAKE3 of
 * 1 MiB segments, on up to four cores), receive does that and then writes
 * what a dd copy into a file with O_DIRECT and fsync writes.
 */
async function streamRows() {
  const dir = join(root, '.bench-cache', 'stream');
  mkdirSync(dir, { recursive: true });
  const GiB = 1 << 30;
  const blocks = GiB / (128 * 512);
  const md = join(dir, 'metadata.bin');
  const data = join(dir, 'data.img');
  const stream = join(dir, 'full-v3.stream'); // named by the format version send writes
  const target = join(dir, 'target.img');
  if (!existsSync(md)) {
    writeFileSync(
      `${md}.xml`,
      `<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="${blocks}">\n` +
        `  <device dev_id="1" mapped_blocks="${blocks}" transaction="0" creation_time="0" snap_time="0">\n` +
        `    <range_mapping origin_begin="0" data_begin="0" length="${blocks}" time="0"/>\n` +
        '  </device>\n</superblock>\n',
    );
    writeFileSync(`${md}.tmp`, '');
    spawnSync('truncate', ['-s', String(8 << 20), `${md}.tmp`]);
    if (spawnSync('thin_restore', ['-q', '-i', `${md}.xml`, '-o', `${md}.tmp`], { stdio: 'inherit' }).status !== 0) throw new Error('thin_restore failed');
    renameSync(`${md}.tmp`, md);
  }
  if (!existsSync(data)) {
    process.stderr.write('bench: writing a 1 GiB data image...\n');
    const { createCipheriv } = await import('node:crypto');
    const c = createCipheriv('aes-128-ctr', Buffer.alloc(16), Buffer.alloc(16));
    const out = createWriteStream(`${data}.tmp`);
    const zeros = Buffer.alloc(4 << 20);
    for (let n = 0; n < GiB; n += zeros.length) {
      if (!out.write(c.update(zeros))) await new Promise((r) => out.once('drain', r));
    }
    await new Promise((res) => out.end(res));
    renameSync(`${data}.tmp`, data);
  }
  const send = ['send', '--metadata', md, '--data', data, '--snap', '1', '--size', String(GiB), '-q'];
  if (!existsSync(stream)) {
    if (spawnSync(process.execPath, [cli, ...send, '-o', `${stream}.tmp`], { stdio: 'inherit' }).status !== 0) throw new Error('dmthin send failed');
    renameSync(`${stream}.tmp`, stream);
  }
  const dd = ['dd', [`if=${data}`, 'of=/dev/null', 'iflag=direct', 'bs=1M']];
  const rows = [
    ['send', 'offline send of a fully mapped 1 GiB thin (to /dev/null)', [process.execPath, [cli, ...send]], 'throughput >= 0.8x dd'],
    ['receive', 'receive of that stream into a file (verify, then write)', [process.execPath, [cli, 'receive', '--target', target, '--create', '-q', '-i', stream]], 'throughput >= 0.5x dd'],
    [
      'receive-piped',
      'receive, the stream piped (spooled while verified)',
      ['sh', ['-c', `cat "$1" | exec "$2" "$3" receive --target "$4" --create -q`, 'sh', stream, process.execPath, cli, target]],
      'memory flat whatever the stream size',
    ],
  ].filter(([key]) => wanted(key));
  console.log(`stream rows: 1 GiB thin, 64 KiB blocks; dd if=data.img iflag=direct bs=1M as the reference; ${ROUNDS} interleaved rounds`);
  // Seconds no run of a row can beat here, measured beside the rows: the
  // stream's digest puts every byte through BLAKE3, which version 3 spreads
  // over the addon's lanes (one per core, at most four); a receive verifies
  // the whole stream (that digest) before it writes the device with O_DIRECT
  // and fsyncs it, as this dd copy does.
  const bound = {};
  if (wanted('send') || wanted('receive')) {
    const ddCopy = ['dd', [`if=${stream}`, `of=${join(dir, 'dd-copy.img')}`, 'iflag=direct', 'oflag=direct', 'bs=1M', `count=${GiB >> 20}`, 'conv=notrunc,fsync']];
    const hashS = [];
    const copyS = [];
    for (let i = 0; i < ROUNDS; i++) {
      hashS.push(await digestCpuSeconds(data));
      copyS.push(timed(ddCopy[0], ddCopy[1]).wall);
    }
    const lanes = Math.min(4, (await import('node:os')).availableParallelism());
    bound.send = median(hashS) / lanes;
    bound.receive = bound.send + median(copyS);
    console.log(
      `machine bounds: the digest of 1 GiB (format version 3, BLAKE3 of 1 MiB segments: the addon's CPU seconds) ${median(hashS).toFixed(3)} s, over its ${lanes} lanes ${bound.send.toFixed(3)} s, ` +
        `which send cannot beat, nor dd's read of the data; dd copying the stream into a file (O_DIRECT both sides, fsync) ${median(copyS).toFixed(3)} s, ` +
        `which receive does after verifying: ${bound.receive.toFixed(3)} s`,
    );
  }
  const results = [];
  for (const [key, name, ours, goal] of rows) {
    timed(ours[0], ours[1]);
    timed(dd[0], dd[1]);
    const a = [];
    const b = [];
    for (let i = 0; i < ROUNDS; i++) {
      if (i % 2 === 0) {
        a.push(timed(ours[0], ours[1]));
        b.push(timed(dd[0], dd[1]));
      } else {
        b.push(timed(dd[0], dd[1]));
        a.push(timed(ours[0], ours[1]));
      }
    }
    const ma = median(a.map((x) => x.wall));
    const mb = median(b.map((x) => x.wall));
    // The best ratio this row can reach, against its own dd runs (dd's read moves with the host's cache):
    // a send also reads every byte, so it can beat neither its digest nor dd's read.
    const cap = key in bound ? mb / (key === 'send' ? Math.max(bound.send, mb) : bound[key]) : undefined;
    const row = {
      work: name,
      goal: `${goal}; peak RSS <= 80 MiB`,
      dmthin_s: ma.toFixed(3),
      dd_s: mb.toFixed(3),
      throughput_vs_dd: (mb / ma).toFixed(2),
      machine_bound_vs_dd: cap === undefined ? '-' : `<= ${cap.toFixed(2)}`,
      dmthin_rss_MiB: (Math.max(...a.map((x) => x.rssKiB)) / 1024).toFixed(0),
    };
    results.push(row);
    const load = (await import('node:os')).loadavg()[0].toFixed(1);
    const atMost = cap === undefined ? '' : `, at most ${cap.toFixed(2)}x dd on this machine`;
    console.log(`${name}: dmthin ${row.dmthin_s} s, dd ${row.dd_s} s, throughput ${row.throughput_vs_dd}x dd (goal ${goal}${atMost}), peak RSS ${row.dmthin_rss_MiB} MiB (goal <= 80 MiB), load average ${load}`);
  }
  console.table(results);
}

/**
 * CPU seconds (all threads) of the digest send computes over the file's
 * bytes: the addon's pipe, as the default format version hashes (version 3:
 * BLAKE3 of 1 MiB segments), fed the file in 64 MiB pieces read into one
 * reused buffer (as send reuses its batch buffers); reading is not counted.
 * The median piece's CPU per byte times the file's size: the first piece
 * costs several times the others here (first touches), which a send pays
 * on its first batches, not per GiB.
 */
async function digestCpuSeconds(path) {
  const require = createRequire(import.meta.url);
  const { native } = require(join(root, 'dist/native/binding.js'));
  const { digestSpec, FORMAT_VERSION } = require(join(root, 'dist/stream/format/records.js'));
  const { segmentBytes, algorithm } = digestSpec(FORMAT_VERSION);
  const fd = openSync(path, 'r');
  const perByte = [];
  let total = 0;
  try {
    const p = new (native().DigestPipe)(64 << 20, segmentBytes, algorithm);
    const buf = Buffer.alloc(64 << 20);
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; total += n) {
      const c0 = process.cpuUsage();
      p.updateHeld(buf.subarray(0, n));
      await p.ready(0);
      const c = process.cpuUsage(c0);
      perByte.push((c.user + c.system) / 1e6 / n);
    }
    p.digest();
  } finally {
    closeSync(fd);
  }
  return median(perByte) * total;
}

/** The bench image of `mappings` mappings on `dataBlocks` data blocks, built once. */
async function benchImage(mappings, dataBlocks) {
  const cache = join(root, '.bench-cache');
  mkdirSync(cache, { recursive: true });
  const img = join(cache, dataBlocks === mappings * 2 ? `bench-${mappings}.bin` : `bench-${mappings}-data${dataBlocks}.bin`);
  if (!existsSync(img)) {
    process.stderr.write(`bench: building a ${mappings}-mapping image (${dataBlocks} data blocks) with thin_restore...\n`);
    const t0 = Date.now();
    await makeImage(img, mappings, dataBlocks);
    process.stderr.write(`bench: built in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  }
  return img;
}

/**
 * The memory rows: dmthin's peak RSS (the largest of the rounds) and median
 * wall time for dump, ls, delta, check and rmap on the bench image of each
 * size, against issue 11's goal of 80 MiB at 1M, 10M and 40M mappings. No
 * reference tool runs here (at 40M they take minutes); the walk rows above
 * give the ratios.
 */
async function memoryRows(sizes) {
  const rounds = Math.max(1, Math.min(ROUNDS, 3));
  const table = [];
  for (const m of sizes) {
    const dataBlocks = sizes.length === 1 ? DATA_BLOCKS : m * 2;
    const img = await benchImage(m, dataBlocks);
    const cmds = [
      ['dump', ['dump', img]],
      ['ls', ['ls', '-o', 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS', img]],
      ['delta', ['delta', '--snap1', '0', '--snap2', '1', img]],
      ['check', ['check', '-q', img]],
      ['rmap', ['rmap', '-q', '--region', `0..${dataBlocks}`, img]],
    ];
    const row = { mappings: m, data_blocks: dataBlocks, metadata_MiB: Math.round(statSync(img).size / 2 ** 20) };
    for (const [name, argv] of cmds) {
      const runs = [];
      for (let i = 0; i < rounds; i++) runs.push(timed(process.execPath, [cli, ...argv]));
      const wall = median(runs.map((x) => x.wall));
      const rss = Math.max(...runs.map((x) => x.rssKiB)) / 1024;
      row[`${name}_MiB`] = rss.toFixed(0);
      row[`${name}_s`] = wall.toFixed(2);
      row[`${name}_s_per_M`] = ((wall / m) * 1e6).toFixed(2);
      console.log(`memory ${m} mappings, ${name}: peak RSS ${rss.toFixed(0)} MiB (goal <= 80 MiB), ${wall.toFixed(2)} s (${((wall / m) * 1e6).toFixed(2)} s per million mappings)`);
    }
    table.push(row);
  }
  console.table(table);
  // The README's table: peak RSS / seconds per command and size.
  console.log('| mappings | ' + ['dump', 'ls', 'delta', 'check', 'rmap'].join(' | ') + ' |');
  console.log('|---|---|---|---|---|---|');
  for (const r of table) {
    const cell = (n) => `${r[`${n}_MiB`]} MiB, ${r[`${n}_s`]} s`;
    console.log(`| ${r.mappings / 1e6}M | ${['dump', 'ls', 'delta', 'check', 'rmap'].map(cell).join(' | ')} |`);
  }
}

async function main() {
  if (SCALE) {
    await memoryRows(SCALE);
    return;
  }
  const cache = join(root, '.bench-cache');
  mkdirSync(cache, { recursive: true });
  // The stream rows have their own fixture: `--only send,receive` builds no metadata image.
  const STREAM_KEYS = ['send', 'receive', 'receive-piped'];
  if (ONLY && [...ONLY].every((k) => STREAM_KEYS.includes(k))) return streamRows();
  // Rows that read the bench image (ls-nowalk and memory too); the others build their own.
  const needImage = ['dump', 'ls', 'rmap', 'delta', 'check', 'ls-nowalk', 'memory'].some(wanted);
  const img = needImage ? await benchImage(MAPPINGS, DATA_BLOCKS) : join(cache, `bench-${MAPPINGS}.bin`);
  const shared = join(cache, `bench-shared-${MAPPINGS}.bin`);
  const needShared = ['delta-shared', 'delta-no-same', 'check-shared'].some(wanted);
  if (needShared && !existsSync(shared)) {
    process.stderr.write(`bench: building a ${MAPPINGS}-mapping origin + snapshot with 75 copy-on-write writes...\n`);
    const t0 = Date.now();
    await makeSharedImage(shared, MAPPINGS, 75);
    process.stderr.write(`bench: built in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  }
  // issue 11's --no-same row: a 1.5M-mapping origin and its snapshot sharing
  // all leaves but the ~75 the writes copied (~99%), whatever --mappings says.
  const SHARED_SMALL = 1_500_000;
  const sharedSmall = join(cache, `bench-shared-${SHARED_SMALL}.bin`);
  if (wanted('delta-no-same-shared') && !existsSync(sharedSmall)) {
    process.stderr.write(`bench: building a ${SHARED_SMALL}-mapping origin + snapshot with 75 copy-on-write writes...\n`);
    await makeSharedImage(sharedSmall, SHARED_SMALL, 75);
  }
  const size = needImage ? statSync(img).size : 0;
  // [key, name, dmthin, reference, goal]: the goal is issue 11's (wall ratio
  // at 4M and 10M mappings; peak RSS <= 80 MiB at 1M, 10M and 40M).
  const WALK_GOAL = '<= 0.35x, <= 80 MiB';
  const all = [
    ['dump', 'dump (xml)', [process.execPath, [cli, 'dump', img]], ['thin_dump', [img]], WALK_GOAL],
    [
      'ls',
      'ls (DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS)',
      [process.execPath, [cli, 'ls', '-o', 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS', img]],
      ['thin_ls', ['-o', 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS', img]],
      WALK_GOAL,
    ],
    [
      'rmap',
      // The bench image is restored, so no node is shared and both print the same runs.
      `rmap (the whole data range, 0..${DATA_BLOCKS})`,
      [process.execPath, [cli, 'rmap', '-q', '--region', `0..${DATA_BLOCKS}`, img]],
      ['thin_rmap', ['--region', `0..${DATA_BLOCKS}`, img]],
      WALK_GOAL,
    ],
    [
      'delta',
      'delta (two devices sharing no nodes)',
      [process.execPath, [cli, 'delta', '--snap1', '0', '--snap2', '1', img]],
      ['thin_delta', ['--snap1', '0', '--snap2', '1', img]],
      '<= 0.5x, <= 80 MiB',
    ],
    [
      'delta-shared',
      `delta (origin vs snapshot sharing all but 75 written blocks, ${MAPPINGS} mappings each)`,
      [process.execPath, [cli, 'delta', '--snap1', '0', '--snap2', '1', shared]],
      ['thin_delta', ['--snap1', '0', '--snap2', '1', shared]],
      '<= 80 MiB',
    ],
    [
      'delta-no-same',
      'delta --no-same (same pair; thin_delta has no such option, so it prints everything)',
      [process.execPath, [cli, 'delta', '--no-same', '--snap1', '0', '--snap2', '1', shared]],
      ['thin_delta', ['--snap1', '0', '--snap2', '1', shared]],
      '<= 80 MiB',
    ],
    [
      'delta-no-same-shared',
      `delta --no-same (${SHARED_SMALL}-mapping origin vs its snapshot, ~99% of leaves shared, 75 written blocks; thin_delta prints everything)`,
      [process.execPath, [cli, 'delta', '--no-same', '--snap1', '0', '--snap2', '1', sharedSmall]],
      ['thin_delta', ['--snap1', '0', '--snap2', '1', sharedSmall]],
      '<= 0.15x',
    ],
    // check: both tools verify the trees and recount the space maps (dmthin also the data space map).
    ['check', 'check (trees and space maps)', [process.execPath, [cli, 'check', '-q', img]], ['thin_check', ['-q', img]], WALK_GOAL],
    [
      'check-shared',
      'check (origin + snapshot sharing all but 75 written blocks)',
      [process.execPath, [cli, 'check', '-q', shared]],
      ['thin_check', ['-q', shared]],
      '<= 80 MiB',
    ],
  ];
  if (['devices-dump', 'devices-ls', 'devices-ls-excl', 'devices-delta'].some(wanted)) {
    const dimg = await devicesImage(cache);
    console.log(`devices image: ${dimg} (${DEVICES} thin devices, a few mappings each, ${(statSync(dimg).size / 2 ** 20).toFixed(0)} MiB metadata)`);
    all.push(
      ['devices-dump', `dump (xml) of ${DEVICES} small devices`, [process.execPath, [cli, 'dump', dimg]], ['thin_dump', [dimg]], '<= 0.5x'],
      ['devices-ls', `ls (default fields) of ${DEVICES} small devices`, [process.execPath, [cli, 'ls', dimg]], ['thin_ls', [dimg]], '<= 0.5x'],
      [
        'devices-ls-excl',
        `ls (DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS) of ${DEVICES} small devices`,
        [process.execPath, [cli, 'ls', '-o', 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS', dimg]],
        ['thin_ls', ['-o', 'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS', dimg]],
        '<= 0.5x',
      ],
      // Two devices of many: the roots and details are looked up, not read whole
      // (no goal in issue 11's table; thin_delta does the same lookups).
      ...[[Math.floor(DEVICES / 4), Math.floor((3 * DEVICES) / 4)]].map(([a, b]) => [
        'devices-delta',
        `delta of devices ${a} and ${b} of ${DEVICES} small devices`,
        [process.execPath, [cli, 'delta', '--snap1', String(a), '--snap2', String(b), dimg]],
        ['thin_delta', ['--snap1', String(a), '--snap2', String(b), dimg]],
        'none (start-up bound)',
      ]),
    );
  }
  const pairs = all.filter(([key]) => wanted(key)).map(([, ...rest]) => rest);
  if (pairs.length && needImage) console.log(`image: ${img} (${MAPPINGS} mappings, ${DATA_BLOCKS} data blocks, ${(size / 2 ** 20).toFixed(0)} MiB metadata), ${ROUNDS} interleaved rounds`);
  console.log(`node ${process.version}; times are medians of wall-clock seconds, ratio = their quotient, paired = median of the rounds' quotients; load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  const results = [];
  for (const [name, ours, ref, goal] of pairs) {
    timed(ours[0], ours[1]); // warm the page cache and the binaries
    timed(ref[0], ref[1]);
    const a = [];
    const b = [];
    for (let i = 0; i < ROUNDS; i++) {
      // Alternate which goes first so drift hits both equally.
      if (i % 2 === 0) {
        a.push(timed(ours[0], ours[1]));
        b.push(timed(ref[0], ref[1]));
      } else {
        b.push(timed(ref[0], ref[1]));
        a.push(timed(ours[0], ours[1]));
      }
    }
    const ma = median(a.map((x) => x.wall));
    const mb = median(b.map((x) => x.wall));
    const row = {
      work: name,
      dmthin_s: ma.toFixed(3),
      reference_s: mb.toFixed(3),
      ratio: (ma / mb).toFixed(2),
      // Each round's dmthin run over the reference run next to it, median:
      // on a shared machine whose speed drifts, the steadier of the two.
      paired: median(a.map((x, i) => x.wall / b[i].wall)).toFixed(2),
      goal,
      dmthin_rss_MiB: (Math.max(...a.map((x) => x.rssKiB)) / 1024).toFixed(0),
      reference_rss_MiB: (Math.max(...b.map((x) => x.rssKiB)) / 1024).toFixed(0),
    };
    results.push(row);
    console.log(`${name}: dmthin ${row.dmthin_s} s, reference ${row.reference_s} s, ratio ${row.ratio}, paired ${row.paired} (peak RSS ${row.dmthin_rss_MiB} / ${row.reference_rss_MiB} MiB)`);
  }
  if (results.length) console.table(results);
  if (wanted('tiny')) tinyRows();
  if (wanted('ls-nowalk')) await lsNowalkRows(cache, img);
  if (wanted('memory')) await memoryRows([MAPPINGS]);
  if (['send', 'receive', 'receive-piped'].some(wanted)) await streamRows();
  // Issue 12's rows (backup/restore against dd, local and S3): their own script and fixture.
  if (wanted('backup')) {
    const r = spawnSync(process.execPath, [join(root, 'scripts/bench/backup.mjs')], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error('scripts/bench/backup.mjs failed');
  }
}

/** The image of --devices small thin devices, built once. */
async function devicesImage(cache) {
  const dimg = join(cache, `bench-devices-${DEVICES}.bin`);
  if (!existsSync(dimg)) {
    process.stderr.write(`bench: building an image of ${DEVICES} small thin devices with thin_restore...\n`);
    const t0 = Date.now();
    await makeDevicesImage(dimg, DEVICES);
    process.stderr.write(`bench: built in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  }
  return dimg;
}

/**
 * Runs every command once a round, each round starting one command later
 * (so drift and cache effects hit all alike), after one warm-up run each.
 * Returns each command's runs.
 */
function rotated(cmds, rounds) {
  for (const [c, a] of cmds) timed(c, a);
  const runs = cmds.map(() => []);
  for (let i = 0; i < rounds; i++) {
    for (let j = 0; j < cmds.length; j++) {
      const k = (i + j) % cmds.length;
      runs[k].push(timed(cmds[k][0], cmds[k][1]));
    }
  }
  return runs;
}

const NODE0 = [process.execPath, ['-e', '0']];
const ms = (s) => (s * 1000).toFixed(0);

/**
 * tiny: each command on the 3-device example image (start-up is all there is
 * to it) against `node -e 0` in the same rotation; printed as median
 * milliseconds over node's median, wall and CPU (user + sys). Goal: +25 ms.
 */
function tinyRows() {
  const pool = join(root, 'examples/pool.bin');
  // send reads data too: a sparse image of the example's 1000 data blocks of 64 KiB.
  const tinyData = join(root, '.bench-cache', 'tiny-data.img');
  if (!existsSync(tinyData)) {
    mkdirSync(dirname(tinyData), { recursive: true });
    writeFileSync(tinyData, '');
    spawnSync('truncate', ['-s', String(1000 * 65536), tinyData]);
  }
  const cmds = [
    ['dump', ['dump', pool]],
    ['ls', ['ls', pool]],
    ['ls EXCLUSIVE', ['ls', '-o', 'DEV,EXCLUSIVE_BLOCKS,SHARED_BLOCKS', pool]],
    ['delta', ['delta', '--snap1', '1', '--snap2', '2', pool]],
    ['check', ['check', '-q', pool]],
    ['rmap', ['rmap', '--region', '0..1000', pool]],
    ['send', ['send', '--metadata', pool, '--data', tinyData, '--snap', '1', '--size', String(256 * 65536), '-q']],
    ['send --help', ['send', '--help']],
    ['--help', ['--help']],
  ];
  const rounds = Math.max(ROUNDS, 15);
  const runs = rotated([NODE0, ...cmds.map(([, a]) => [process.execPath, [cli, ...a]])], rounds);
  const nodeWall = median(runs[0].map((x) => x.wall));
  const nodeCpu = median(runs[0].map((x) => x.cpu));
  console.log(`tiny: examples/pool.bin, ${rounds} rotated rounds; node -e 0: ${ms(nodeWall)} ms wall, ${ms(nodeCpu)} ms CPU (medians)`);
  const results = cmds.map(([name], i) => ({
    work: `${name} (tiny image)`,
    wall_over_node_ms: ms(median(runs[i + 1].map((x) => x.wall)) - nodeWall),
    cpu_over_node_ms: ms(median(runs[i + 1].map((x) => x.cpu)) - nodeCpu),
    goal: '<= node -e 0 + 25 ms',
    dmthin_rss_MiB: (Math.max(...runs[i + 1].map((x) => x.rssKiB)) / 1024).toFixed(0),
  }));
  for (const r of results) console.log(`${r.work}: +${r.wall_over_node_ms} ms wall, +${r.cpu_over_node_ms} ms CPU over node -e 0 (goal +25 ms)`);
  console.log(`load average after: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  console.table(results);
}

/**
 * ls-nowalk: `ls` with its default fields (DEV, MAPPED, CREATE_TIME,
 * SNAP_TIME: no mapping tree is read) on the bench image and on the devices
 * image, against `node -e 0` (goal <= 1.5x) and thin_ls in one rotation.
 */
async function lsNowalkRows(cache, img) {
  const images = [
    [`bench image (${MAPPINGS} mappings)`, img],
    [`devices image (${DEVICES} devices)`, await devicesImage(cache)],
  ];
  const results = [];
  for (const [name, path] of images) {
    const runs = rotated([NODE0, [process.execPath, [cli, 'ls', path]], ['thin_ls', [path]]], ROUNDS);
    const [n, a, b] = runs.map((r) => median(r.map((x) => x.wall)));
    const row = {
      work: `ls (default fields), ${name}`,
      dmthin_s: a.toFixed(3),
      node_e0_s: n.toFixed(3),
      thin_ls_s: b.toFixed(3),
      vs_node: (a / n).toFixed(2),
      vs_thin_ls: (a / b).toFixed(2),
      goal: '<= 1.5x node -e 0',
      dmthin_rss_MiB: (Math.max(...runs[1].map((x) => x.rssKiB)) / 1024).toFixed(0),
    };
    results.push(row);
    console.log(`${row.work}: dmthin ${row.dmthin_s} s, node -e 0 ${row.node_e0_s} s (${row.vs_node}x, goal <= 1.5x), thin_ls ${row.thin_ls_s} s (${row.vs_thin_ls}x); load average ${loadavg()[0].toFixed(2)}`);
  }
  console.table(results);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
