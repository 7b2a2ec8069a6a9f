/*
 * Runs in a child node process with LD_PRELOAD=fake_dm.so (see
 * oracle/fake_dm.c): drives the real addon and DeviceMapper against the
 * fake dm ioctls and prints one JSON object of outcomes for the parent test.
 * argv: <control path> <log dir>
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const ts = require('typescript');

// Load the TypeScript sources directly (type-stripped, no checking).
require.extensions['.ts'] = (module, filename) => {
  const src = fs.readFileSync(filename, 'utf8');
  const out = ts.transpileModule(src, {
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
    fileName: filename,
  }).outputText;
  module._compile(out, filename);
};

const src = path.join(__dirname, '..', '..', '..', 'src');
const { native } = require(path.join(src, 'native', 'binding.ts'));
const { DeviceMapper } = require(path.join(src, 'dm', 'device-mapper.ts'));
const { Cmd, encodeRequest, decodeHeader } = require(path.join(src, 'dm', 'ioctl.ts'));

const [controlPath, logDir] = process.argv.slice(2);

function errShape(e) {
  const o = { name: e.name, message: e.message };
  for (const k of ['code', 'errno', 'syscall', 'path', 'ioctl', 'device', 'targetMessage']) if (e[k] !== undefined) o[k] = e[k];
  return o;
}

function calls(name) {
  const f = path.join(logDir, `${name}.log`);
  if (!fs.existsSync(f)) return [];
  return fs
    .readFileSync(f, 'utf8')
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const [nr, size, version, flags, ...rest] = l.split(' ');
      return { nr: Number(nr), size: Number(size), version, flags: Number(flags), name: rest.join(' ') };
    });
}

async function scenario([name, fn]) {
  process.env.FAKE_DM_LOG = path.join(logDir, `${name}.log`);
  let result;
  try {
    result = { ok: await fn() };
  } catch (e) {
    result = { error: errShape(e) };
  }
  result.calls = calls(name);
  return [name, result];
}

async function main() {
  const dm = new DeviceMapper({ controlPath, nodes: 'never' });
  const small = new DeviceMapper({ controlPath, nodes: 'never', maxBufferSize: 65536 });
  const out = {};
  const runs = [
    ['version', () => dm.version()],
    ['eintr', async () => {
      const b = await native().dmIoctl(Cmd.VERSION, encodeRequest({ version: [4, 0, 0], name: 'eintr' }), { controlPath });
      return { length: b.length, version: decodeHeader(b).version };
    }],
    ['list-300', async () => {
      process.env.FAKE_DM_DEVICES = '300';
      const l = await dm.listDevices();
      return { count: l.length, first: l[0], last: l[l.length - 1] };
    }],
    ['list-0', async () => {
      process.env.FAKE_DM_DEVICES = '0';
      return dm.listDevices();
    }],
    ['msg-big', async () => {
      const t = await dm.targetMessage('pool', 0, 'big-output');
      return { length: t.length, allX: /^x+$/.test(t) };
    }],
    ['msg-echo', () => dm.targetMessage('pool', 0, 'echo hello there')],
    ['msg-quiet', async () => (await dm.targetMessage('pool', 0, 'quiet')) === undefined],
    ['msg-eexist', () => dm.targetMessage('pool', 0, 'fail-eexist')],
    ['never-fits', () => small.status('never-fits')],
    ['enxio', () => dm.status('missing')],
    ['enotty', () => dm.info({ uuid: 'U-1' })],
  ];
  // Sequential: the scenarios share environment variables.
  for (const r of runs) {
    const [k, v] = await scenario(r);
    out[k] = v;
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e));
  process.exit(1);
});
