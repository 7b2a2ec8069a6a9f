/**
 * Where the backup tests put their repositories: a fresh local directory
 * always, and a fresh prefix of a bucket on the Ceph test cluster
 * (test/helpers/ceph.ts: skipped loudly without Ceph, a failure under
 * DMTHIN_REQUIRE_S3=1). Each suite is written once against a RepoLocation.
 */
import { join } from 'node:path';
import { describeS3 } from '../helpers/ceph';

export interface RepoLocation {
  /** For test and file names. */
  name: string;
  /** A location where no repository exists yet (a local one goes under `dir`). Call it inside tests. */
  make(dir: string): Promise<string>;
}

let n = 0;

export const LOCAL: RepoLocation = {
  name: 'local',
  make: async (dir) => join(dir, `repo-${process.pid}-${++n}`),
};

/** Runs `suite` on a local repository and on S3 (Ceph). */
export function describeEachRepo(name: string, suite: (loc: RepoLocation) => void): void {
  describe(`${name} (local directory)`, () => suite(LOCAL));
  describeS3(`${name} (S3 on Ceph)`, (s3) => suite({ name: 's3', make: async () => s3.location().url }));
}
