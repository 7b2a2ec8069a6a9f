#!/usr/bin/env node
// Issue 12's measurements: dmthin backup / restore of a 1 GiB thin from
// file-backed images (offline: --metadata/--data), into a local repository
// and, when Ceph is installed, into S3 on a one-node Ceph cluster
// (scripts/ceph/test-cluster.mjs), against dd with O_DIRECT and 1 MiB blocks
// on the same files. Prints throughput ratios, the cost of an incremental
// after a 1% change, dedup (a second volume of the same data) and the
// compression ratio, with peak RSS.
//
//   node scripts/bench/backup.mjs [--gib 1] [--no-s3 | --s3-only]     (npm run bench -- --only backup)
//
// The data image is made of real files (/usr/lib, /usr/share), so chunks
// compress as real data does; cached in .bench-cache/backup/.
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cliNodeFlags } from './cli-flags.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const args = process.argv.slice(2);
const GIB = Number(args.includes('--gib') ? args[args.indexOf('--gib') + 1] : 1);
const cli = join(root, 'dist/cli/main.js');
const BS = 64 * 1024;
const SIZE = GIB * 2 ** 30;
const BLOCKS = SIZE / BS;
const CHANGED = Math.round(BLOCKS / 100); // 1%
const dir = join(root, '.bench-cache', 'backup');
mkdirSync(dir, { recursive: true });

/** Fills `path` with `bytes` bytes of real files' contents (walks /usr/lib then /usr/share). */
function realData(path, bytes) {
  const fd = openSync(`${path}.tmp`, 'w');
  let left = bytes;
  const walk = (d) => {
    let names;
    try {
      names = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of names) {
      if (left <= 0) return;
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        let b;
        try {
          b = readFileSync(p);
        } catch {
          continue;
        }
        const n = Math.min(b.length, left);
        writeSync(fd, b, 0, n);
        left -= n;
      }
    }
  };
  for (const d of ['/usr/lib', '/usr/share', '/usr/bin']) walk(d);
  if (left > 0) throw new Error(`not enough file data on this machine for ${bytes} bytes`);
  closeSync(fd);
  renameSync(`${path}.tmp`, path);
}

/** Metadata: device 1 maps the whole volume to data blocks 0..N-1; device 2 is device 1 with 1% of its blocks remapped (new data past N). */
function metadata(path) {
  const step = Math.floor(BLOCKS / CHANGED);
  let xml = `<superblock uuid="" time="2" transaction="2" data_block_size="${BS / 512}" nr_data_blocks="${BLOCKS + CHANGED}">\n`;
  xml += `  <device dev_id="1" mapped_blocks="${BLOCKS}" transaction="0" creation_time="0" snap_time="0">\n`;
  xml += `    <range_mapping origin_begin="0" data_begin="0" length="${BLOCKS}" time="0"/>\n  </device>\n`;
  xml += `  <device dev_id="2" mapped_blocks="${BLOCKS}" transaction="1" creation_time="1" snap_time="1">\n`;
  let at = 0;
  for (let k = 0; k < CHANGED; k++) {
    const v = k * step;
    if (v > at) xml += `    <range_mapping origin_begin="${at}" data_begin="${at}" length="${v - at}" time="0"/>\n`;
    xml += `    <single_mapping origin_block="${v}" data_block="${BLOCKS + k}" time="1"/>\n`;
    at = v + 1;
  }
  if (at < BLOCKS) xml += `    <range_mapping origin_begin="${at}" data_begin="${at}" length="${BLOCKS - at}" time="0"/>\n`;
  xml += '  </device>\n</superblock>\n';
  writeFileSync(`${path}.xml`, xml);
  writeFileSync(`${path}.tmp`, '');
  spawnSync('truncate', ['-s', String(16 << 20), `${path}.tmp`]);
  const r = spawnSync('thin_restore', ['-q', '-i', `${path}.xml`, '-o', `${path}.tmp`], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error('thin_restore failed');
  renameSync(`${path}.tmp`, path);
}

const md = join(dir, `metadata-${GIB}g.bin`);
const data = join(dir, `data-${GIB}g.img`);
if (!existsSync(data)) {
  process.stderr.write(`backup bench: writing a ${GIB} GiB data image of real files (+1% for the changed blocks)...\n`);
  realData(data, SIZE + CHANGED * BS);
}
if (!existsSync(md)) metadata(md);

function timed(cmd, argv, env = {}) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-f', '%e %M %U %S', cmd, ...argv], { encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 1 << 26 });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed: ${r.stderr}`);
  const last = r.stderr.trim().split('\n').at(-1).split(' ').map(Number);
  return { wall, rssMiB: last[1] / 1024, cpu: last[2] + last[3], stdout: r.stdout };
}
// The CLI with its #! line's node options, as the installed command runs.
const dmthin = (argv, env) => timed(process.execPath, [...cliNodeFlags(cli), cli, ...argv], env);
const ddRead = () => timed('dd', [`if=${data}`, 'of=/dev/null', 'iflag=direct', 'bs=1M', `count=${SIZE >> 20}`, 'status=none']).wall;
const ddWrite = (target) => {
  rmSync(target, { force: true });
  const t = timed('dd', [`if=${data}`, `of=${target}`, 'iflag=direct', 'oflag=direct', 'bs=1M', `count=${SIZE >> 20}`, 'conv=fsync', 'status=none']).wall;
  rmSync(target, { force: true });
  return t;
};
const sizeArgs = ['--metadata', md, '--data', data, '--size', String(SIZE)];

/** One run of the whole sequence into `repo`; returns the rows. */
function sequence(label, repo, env) {
  const rows = [];
  const row = (work, r, ref, extra = '') => {
    rows.push({ repo: label, work, dmthin_s: r.wall.toFixed(2), dd_s: ref ? ref.toFixed(2) : '-', throughput_vs_dd: ref ? (ref / r.wall).toFixed(3) : '-', cpu_s: r.cpu.toFixed(2), peak_rss_MiB: r.rssMiB.toFixed(0), note: extra });
  };
  dmthin(['backups', 'init', '--repo', repo, '--json'], env);
  const ddr = ddRead();
  const full = dmthin(['backup', ...sizeArgs, '--snap', '1', '--repo', repo, '--volume', 'v1', '--json', '-q'], env);
  const fj = JSON.parse(full.stdout);
  row('full backup (1 GiB, 64 KiB chunks)', full, ddr, `${fj.chunksNew} new chunks, ${fj.bytesUploaded} bytes stored (compression ${(fj.bytesRead / fj.bytesUploaded).toFixed(2)}:1)`);
  const inc = dmthin(['backup', ...sizeArgs, '--snap', '2', '--repo', repo, '--volume', 'v1', '--json', '-q'], env);
  const ij = JSON.parse(inc.stdout);
  row('incremental backup, 1% changed', inc, null, `${ij.chunksRead} chunks read, ${ij.chunksNew} new, base ${ij.base ? 'used' : 'NONE'}`);
  const dedup = dmthin(['backup', ...sizeArgs, '--snap', '1', '--repo', repo, '--volume', 'v2', '--json', '-q'], env);
  const dj = JSON.parse(dedup.stdout);
  row('second volume, same data (dedup)', dedup, ddr, `${dj.chunksNew} new chunks of ${dj.chunks}, ${dj.bytesUploaded} bytes stored`);
  const target = join(tmpdir(), `dmthin-backup-bench-${process.pid}.img`);
  const ddw = ddWrite(target);
  const restore = dmthin(['restore', '--repo', repo, '--backup', ij.id, '--target', target, '--create', '--json', '-q'], env);
  row('full restore into a new file', restore, ddw);
  const back = dmthin(['restore', '--repo', repo, '--backup', fj.id, '--target', target, '--json', '-q'], env);
  row('restore of the previous backup over it (differential)', back, null, `${JSON.parse(back.stdout).chunksWritten} chunks written`);
  rmSync(target, { force: true });
  rmSync(`${target}.dmthin-restore.json`, { force: true });
  return rows;
}

const all = [];
const localRepo = join(dir, `repo-${process.pid}`);
if (!args.includes('--s3-only')) {
  rmSync(localRepo, { recursive: true, force: true });
  try {
    all.push(...sequence('local directory', localRepo, {}));
  } finally {
    rmSync(localRepo, { recursive: true, force: true });
  }
}

const haveCeph = spawnSync('sh', ['-c', 'command -v radosgw && command -v ceph-mon && command -v ceph-osd'], { stdio: 'ignore' }).status === 0;
if (haveCeph && !args.includes('--no-s3')) {
  const cdir = join(tmpdir(), `dmthin-backup-bench-ceph-${process.pid}`);
  const s = spawnSync(process.execPath, [join(root, 'scripts/ceph/test-cluster.mjs'), 'start', cdir], { encoding: 'utf8' });
  if (s.status !== 0) throw new Error(`ceph cluster: ${s.stderr}`);
  const c = JSON.parse(s.stdout);
  // The cluster's daemons outlive this process: stop them however it ends
  // (a reader of stdout that goes away, as in `npm run bench | head`, once
  // left a cluster running). exit handlers may only do synchronous work.
  let stopped = false;
  const stop = (io) => {
    if (stopped) return;
    stopped = true;
    spawnSync(process.execPath, [join(root, 'scripts/ceph/test-cluster.mjs'), 'stop', cdir], { stdio: io });
    rmSync(cdir, { recursive: true, force: true });
  };
  process.on('exit', () => stop('ignore'));
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.once(sig, () => process.exit(128 + ({ SIGINT: 2, SIGTERM: 15, SIGHUP: 1 })[sig]));
  process.stdout.on('error', () => process.exit(141));
  try {
    const env = { AWS_ENDPOINT_URL: c.endpoint, AWS_REGION: c.region, AWS_ACCESS_KEY_ID: c.accessKeyId, AWS_SECRET_ACCESS_KEY: c.secretAccessKey };
    const { S3Client, CreateBucketCommand } = await import('@aws-sdk/client-s3');
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true'; // the SDK compares with "true"
    const client = new S3Client({ endpoint: c.endpoint, region: c.region, forcePathStyle: true, credentials: { accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey } });
    await client.send(new CreateBucketCommand({ Bucket: 'bench' }));
    client.destroy();
    all.push(...sequence('S3 (Ceph radosgw, memstore, this host)', 's3://bench/repo', env));
  } finally {
    stop('inherit');
  }
} else if (!args.includes('--no-s3')) {
  console.warn('backup bench: Ceph is not installed: the S3 rows are not run');
}
console.log(`backup bench: ${GIB} GiB volume of real files' data, 64 KiB blocks; node ${process.version}; load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
console.table(all);
