/**
 * Where the backup tests put their repositories: a fresh local directory
 * always; an S3 prefix on the test cluster when one is configured
 * (test/helpers/ceph.ts, once the S3 backend is merged).
 */
import { join } from 'node:path';

export interface RepoLocation {
  /** For test names. */
  name: string;
  /** A location where no repository exists yet (under `dir` for a local one). */
  make(dir: string): Promise<string>;
  /** Removes what make() made, when the scratch directory does not. */
  cleanup?(location: string): Promise<void>;
}

let n = 0;

export const LOCAL: RepoLocation = {
  name: 'local',
  make: async (dir) => join(dir, `repo-${process.pid}-${++n}`),
};

export const REPO_LOCATIONS: RepoLocation[] = [LOCAL];
