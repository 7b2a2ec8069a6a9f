// The backend contract (backend-contract.ts) on a local directory.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalBackend } from '../../src/repo/local-backend';
import { backendContract } from './backend-contract';

backendContract('local directory', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'dmthin-contract-'));
  return { backend: new LocalBackend(join(dir, 'repo')), cleanup: async () => rmSync(dir, { recursive: true, force: true }) };
});
