/**
 * Runs the built CLI (dist/cli/main.js) the way a user does: a child process,
 * real exit status and stderr. `npm test` builds dist/ first.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export const CLI = join(__dirname, '..', '..', 'dist', 'cli', 'main.js');

export interface CliResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function ensureBuilt(): void {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` (npm test does it)`);
}

export function runCli(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): CliResult {
  ensureBuilt();
  // env given explicitly: jest's process.env is a copy that child processes do not see.
  const r = spawnSync(process.execPath, [CLI, ...args], {
    env: opts.env ?? process.env,
    encoding: 'utf8',
    maxBuffer: 1 << 30,
    timeout: opts.timeoutMs ?? 60_000,
    killSignal: 'SIGKILL',
  });
  if (r.error) throw r.error;
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** sha256 and length of a command's stdout, streamed (for outputs of hundreds of MiB). */
export function hashOutput(cmd: string, args: string[], timeoutMs = 300_000, env?: NodeJS.ProcessEnv): Promise<{ status: number | null; sha256: string; bytes: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
    const h = createHash('sha256');
    let bytes = 0;
    let stderr = '';
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.stdout.on('data', (d: Buffer) => {
      h.update(d);
      bytes += d.length;
    });
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, sha256: h.digest('hex'), bytes, stderr });
    });
  });
}

export function hashCli(args: string[], timeoutMs?: number, env?: NodeJS.ProcessEnv) {
  ensureBuilt();
  return hashOutput(process.execPath, [CLI, ...args], timeoutMs, env);
}
