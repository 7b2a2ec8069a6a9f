#!/usr/bin/env node
// A throw-away one-node Ceph cluster serving S3 on 127.0.0.1, for the S3
// backend's tests (issue 12). Facts and pitfalls behind each setting:
// ../shared/docs/object-storage.md (Debian's Ceph 16 radosgw).
//
//   node scripts/ceph/test-cluster.mjs start DIR [--objectstore memstore|bluestore] [--mgr]
//   node scripts/ceph/test-cluster.mjs stop DIR [--keep]
//   node scripts/ceph/test-cluster.mjs start-rgw DIR NAME   (another or a restarted gateway)
//   node scripts/ceph/test-cluster.mjs stop-rgw DIR NAME [--graceful]   (failure injection: SIGKILL)
//
// `start` prints one JSON line: {endpoint, gateway, region, accessKeyId,
// secretAccessKey, dir, pids, objectstore, startMs} (state in DIR/cluster.json
// and DIR/gateways/) and exits 0 once the S3 user exists and radosgw listens.
// Every daemon runs in its own session with stdin closed and stdout/stderr to
// DIR/log/, so a CI runner waiting on our pipes is never held open by a
// daemon; PIDs are recorded. `stop` kills radosgw first (stopped together with
// the OSD it can wait out its exit timeout), then the OSD, mgr and mon, and
// removes DIR's data (--keep: graceful SIGTERMs, data kept).
//
// Objectstore: memstore by default. Measured here (2 cores): S3 ready in
// 2.4-2.6 s on a quiet machine (3.7-7.0 s with the cores shared at load 18),
// bluestore on a sparse file 8.7-9.2 s at the same load; memstore writes
// nothing to disk and its data lives in the OSD's memory (capped by `memstore
// device bytes`), which is all a test suite needs, and a test cluster's data
// is thrown away anyway. `--objectstore bluestore` is kept for trying the disk
// path (its block file lives outside the OSD data directory: bluestore
// replaces $osd_data/block with a symlink to it). The mgr is optional
// (`--mgr`): without it the cluster serves I/O the same, with ~300 MB less
// memory and a faster start. Resident memory of mon + OSD measured at
// ~84 MiB (memstore, empty), radosgw ~55 MiB.
import { spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { join, resolve } from 'node:path';

const ACCESS_KEY = 'DMTHINTESTACCESSKEY1';
const SECRET_KEY = 'dmthin-test-secret-key-0123456789abcdefgh';
const REGION = 'us-east-1';
const RGW_MAIN = 'main';

function die(msg) {
  process.stderr.write(`test-cluster: ${msg}\n`);
  process.exit(1);
}

/** A port nobody listens on now (the kernel's choice for port 0). */
function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function run(cmd, args, dir, { allowFail = false, timeoutMs = 60000 } = {}) {
  const r = spawnSync(cmd, args, {
    encoding: 'utf8',
    env: { ...process.env, CEPH_CONF: join(dir, 'ceph.conf') },
    timeout: timeoutMs,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (!allowFail && (r.error || r.status !== 0)) {
    die(`${cmd} ${args.join(' ')} failed (${r.error?.message ?? `exit ${r.status}`}): ${(r.stderr || r.stdout || '').trim().slice(-2000)}`);
  }
  return r;
}

/** Starts a daemon in the foreground mode (-f: its PID is the daemon's), in
 * its own session, stdio to a file, so no descriptor of ours is inherited. */
function daemon(dir, name, cmd, args) {
  const out = openSync(join(dir, 'log', `${name}.stdout`), 'a');
  const p = spawn(cmd, args, {
    detached: true,
    stdio: ['ignore', out, out],
    env: { ...process.env, CEPH_CONF: join(dir, 'ceph.conf') },
  });
  closeSync(out);
  p.unref();
  if (!p.pid) die(`could not start ${cmd}`);
  return p.pid;
}

/** Running (a zombie is not: once our start-up process has exited, the
 * daemons' parent is whatever init the machine has, which may reap late). */
function alive(pid) {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function waitFor(what, fn, timeoutMs, pid) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (pid !== undefined && !alive(pid)) throw new Error(`${what}: the daemon (pid ${pid}) exited`);
    if (Date.now() > end) throw new Error(`${what}: not ready after ${timeoutMs} ms`);
    await sleep(50);
  }
}

function portOpen(port) {
  return new Promise((res) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      res(true);
    });
    s.once('error', () => res(false));
  });
}

function config(dir, { fsid, monPort, objectstore }) {
  return `[global]
fsid = ${fsid}
mon host = v2:127.0.0.1:${monPort}
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
ms mon client mode = crc
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
run dir = ${dir}/run
log file = ${dir}/log/$name.log
admin socket = ${dir}/run/$name.asok
pid file = ${dir}/run/$name.pid
keyring = /dev/null
crash dir = ${dir}/crash
mon data = ${dir}/mon/$cluster-$id
mgr data = ${dir}/mgr/$cluster-$id
osd data = ${dir}/osd/$cluster-$id
mon data avail warn = 1
mon data avail crit = 0
debug ms = 0

[mon]
paxos propose interval = 0.05
paxos min wait = 0.01

[osd]
osd objectstore = ${objectstore}
memstore device bytes = 4294967296
bluestore block path = ${dir}/osd-block.img
bluestore block create = true
bluestore block size = 10737418240
osd memory target = 1073741824

[client]
rgw data = ${dir}/rgw/$name
debug rgw = 0/0
rgw enable ops log = false
rgw exit timeout secs = 5
rgw enable usage log = false
`;
}

// The cluster's state: DIR/cluster.json, and one DIR/gateways/NAME.json per
// radosgw (one file each, so test files starting their own gateways at the
// same time never rewrite each other's records).
function readState(dir) {
  const f = join(dir, 'cluster.json');
  if (!existsSync(f)) die(`${f} not found: no cluster was started in ${dir}`);
  const state = JSON.parse(readFileSync(f, 'utf8'));
  state.rgw = {};
  const gw = join(dir, 'gateways');
  if (existsSync(gw)) {
    for (const n of readdirSync(gw)) if (n.endsWith('.json')) state.rgw[n.slice(0, -5)] = JSON.parse(readFileSync(join(gw, n), 'utf8'));
  }
  return state;
}

function writeState(dir, state) {
  const { rgw, ...rest } = state;
  mkdirSync(join(dir, 'gateways'), { recursive: true });
  for (const [n, g] of Object.entries(rgw ?? {})) writeGateway(dir, n, g);
  writeFileSync(join(dir, 'cluster.json'), JSON.stringify(rest, null, 2) + '\n');
}

function writeGateway(dir, name, g) {
  const f = join(dir, 'gateways', `${name}.json`);
  writeFileSync(`${f}.tmp`, JSON.stringify(g) + '\n');
  renameSync(`${f}.tmp`, f);
}

/** Starts gateway NAME (client.rgw.NAME) on `port`: the test suite's main
 * one, or one a test owns and may stop and restart without disturbing others. */
function startRgw(dir, name, port) {
  mkdirSync(join(dir, 'rgw', `client.rgw.${name}`), { recursive: true });
  return daemon(dir, `rgw.${name}`, 'radosgw', ['-f', '-n', `client.rgw.${name}`, '-c', join(dir, 'ceph.conf'), '--rgw-frontends', `beast endpoint=127.0.0.1:${port} tcp_nodelay=1`]);
}

async function waitRgw(state, name) {
  const g = state.rgw[name];
  await waitFor(`radosgw ${name}`, () => portOpen(g.port), 60000, g.pid);
}

async function start(dir, opts) {
  const t0 = Date.now();
  if (existsSync(join(dir, 'cluster.json'))) die(`${dir} already holds a cluster (stop it first)`);
  for (const d of ['run', 'log', 'crash', 'mon', 'mgr/ceph-x', 'osd/ceph-0', 'rgw']) mkdirSync(join(dir, d), { recursive: true });
  const fsid = randomUUID();
  const monPort = await freePort();
  const objectstore = opts.objectstore;
  const conf = join(dir, 'ceph.conf');
  writeFileSync(conf, config(dir, { fsid, monPort, objectstore }));
  const state = { dir, fsid, monPort, objectstore, pids: {}, rgw: {} };
  writeState(dir, state);
  const c = ['-c', conf];
  // Monitor.
  const monmap = join(dir, 'monmap');
  run('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', `[v2:127.0.0.1:${monPort}]`, monmap], dir);
  run('ceph-mon', [...c, '--mkfs', '-i', 'a', '--monmap', monmap], dir);
  state.pids.mon = daemon(dir, 'mon', 'ceph-mon', ['-f', ...c, '-i', 'a']);
  writeState(dir, state);
  if (opts.mgr) {
    state.pids.mgr = daemon(dir, 'mgr', 'ceph-mgr', ['-f', ...c, '-i', 'x']);
    writeState(dir, state);
  }
  // OSD: `osd new` talks to the mon, so it doubles as the wait for it.
  const osdUuid = randomUUID();
  const id = run('ceph', [...c, '--connect-timeout', '30', 'osd', 'new', osdUuid], dir).stdout.trim();
  if (id !== '0') die(`ceph osd new gave id ${id}, expected 0`);
  run('ceph-osd', [...c, '-i', '0', '--mkfs', '--osd-uuid', osdUuid], dir, { timeoutMs: 120000 });
  state.pids.osd = daemon(dir, 'osd', 'ceph-osd', ['-f', ...c, '-i', '0']);
  writeState(dir, state);
  await waitFor(
    'osd up',
    () => {
      const r = run('ceph', [...c, 'osd', 'stat', '-f', 'json'], dir, { allowFail: true });
      try {
        return JSON.parse(r.stdout).num_up_osds === 1;
      } catch {
        return false;
      }
    },
    60000,
    state.pids.osd,
  );
  // radosgw creates its pools on first start; the user is created meanwhile.
  const rgwPort = await freePort();
  state.rgw[RGW_MAIN] = { port: rgwPort, pid: startRgw(dir, RGW_MAIN, rgwPort) };
  writeState(dir, state);
  run(
    'radosgw-admin',
    [...c, 'user', 'create', '--uid', 'dmthin-test', '--display-name', 'dmthin test', '--access-key', ACCESS_KEY, '--secret-key', SECRET_KEY],
    dir,
    { timeoutMs: 120000 },
  );
  await waitRgw(state, RGW_MAIN);
  state.startMs = Date.now() - t0;
  writeState(dir, state);
  return state;
}

function info(state, name = RGW_MAIN) {
  return {
    endpoint: `http://127.0.0.1:${state.rgw[name].port}`,
    gateway: name,
    region: REGION,
    accessKeyId: ACCESS_KEY,
    secretAccessKey: SECRET_KEY,
    dir: state.dir,
    pids: { ...state.pids, ...Object.fromEntries(Object.entries(state.rgw).map(([n, g]) => [`rgw.${n}`, g.pid])) },
    objectstore: state.objectstore,
    startMs: state.startMs,
  };
}

async function stopPid(pid, timeoutMs, signal = 'SIGTERM') {
  if (!pid || !alive(pid)) return;
  process.kill(pid, signal);
  const end = Date.now() + timeoutMs;
  while (alive(pid) && Date.now() < end) await sleep(20);
  if (alive(pid)) {
    process.kill(pid, 'SIGKILL');
    while (alive(pid)) await sleep(20);
  }
}

async function stop(dir, keep) {
  const state = readState(dir);
  // radosgw first: with its OSD gone it would wait out its exit timeout. A
  // cluster whose data is thrown away is killed outright: a graceful stop
  // costs ~1.4 s for radosgw and ~2 s each for the OSD and the mon (measured),
  // and nothing needs to survive it. --keep stops gracefully.
  const sig = keep ? 'SIGTERM' : 'SIGKILL';
  await Promise.all(Object.values(state.rgw).map((g) => stopPid(g.pid, 10000, sig)));
  await stopPid(state.pids.osd, 10000, sig);
  await stopPid(state.pids.mgr, 10000, sig);
  await stopPid(state.pids.mon, 10000, sig);
  if (!keep) {
    for (const d of ['run', 'mon', 'mgr', 'osd', 'rgw', 'crash', 'gateways', 'monmap', 'osd-block.img', 'cluster.json']) rmSync(join(dir, d), { recursive: true, force: true });
  } else {
    rmSync(join(dir, 'cluster.json'), { force: true });
    rmSync(join(dir, 'gateways'), { recursive: true, force: true });
  }
}

async function main() {
  const [cmd, dirArg, ...rest] = process.argv.slice(2);
  if (!cmd || !dirArg) die('usage: test-cluster.mjs start DIR [--objectstore memstore|bluestore] [--mgr] | stop DIR [--keep] | start-rgw DIR NAME | stop-rgw DIR NAME [--graceful]');
  const dir = resolve(dirArg);
  const objectstore = rest.includes('--objectstore') ? rest[rest.indexOf('--objectstore') + 1] : 'memstore';
  if (objectstore !== 'memstore' && objectstore !== 'bluestore') die(`unknown objectstore ${objectstore}`);
  switch (cmd) {
    case 'start': {
      let state;
      try {
        state = await start(dir, { objectstore, mgr: rest.includes('--mgr') });
      } catch (e) {
        // Leave nothing running behind a failed start; the logs stay in DIR/log.
        if (existsSync(join(dir, 'cluster.json'))) await stop(dir, true);
        die(`${e.message} (logs: ${join(dir, 'log')})`);
      }
      process.stdout.write(JSON.stringify(info(state)) + '\n');
      break;
    }
    case 'stop':
      await stop(dir, rest.includes('--keep'));
      break;
    case 'stop-rgw': {
      const name = rest[0] ?? die('stop-rgw: which gateway?');
      const state = readState(dir);
      if (!state.rgw[name]) die(`no gateway ${name}`);
      // A crash, not a goodbye: requests in flight break mid-way, as they do
      // when a gateway dies or a load balancer drops it (--graceful: SIGTERM).
      await stopPid(state.rgw[name].pid, 10000, rest.includes('--graceful') ? 'SIGTERM' : 'SIGKILL');
      break;
    }
    case 'start-rgw': {
      // A new gateway gets a free port; a stopped one comes back on its old
      // port (beast binds with SO_REUSEADDR), as a restarted server would.
      const name = rest[0] ?? die('start-rgw: which gateway?');
      if (!/^[a-z0-9-]{1,32}$/.test(name)) die(`bad gateway name ${name}`);
      const state = readState(dir);
      const g = state.rgw[name];
      if (g && alive(g.pid)) die(`radosgw ${name} is already running`);
      const port = g?.port ?? (await freePort());
      state.rgw[name] = { port, pid: startRgw(dir, name, port) };
      writeGateway(dir, name, state.rgw[name]);
      try {
        await waitRgw(state, name);
      } catch (e) {
        die(`${e.message} (logs: ${join(dir, 'log')})`);
      }
      process.stdout.write(JSON.stringify(info(state, name)) + '\n');
      break;
    }
    default:
      die(`unknown command ${cmd}`);
  }
}

await main();
