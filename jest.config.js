/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  // The root-VM suite runs in the guest (npm run test:vm), not here.
  testPathIgnorePatterns: ['/node_modules/', '/test/vm/'],
  transform: {
    '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.test.json' }],
  },
  setupFiles: ['<rootDir>/test/setup/dispose-symbols.ts'],
  testTimeout: 120000,
  // Jest's default (cores - 1) is one worker on a 2-core CI machine, where the
  // tests mostly wait on the processes they spawn: two workers took the host
  // suite from 564 s to 325 s there.
  maxWorkers: Math.max(2, require('node:os').availableParallelism() - 1),
  // The S3 tests' Ceph cluster: started by the first S3 test of a run, stopped here (test/helpers/ceph.ts).
  globalSetup: '<rootDir>/test/setup/ceph-global-setup.js',
  globalTeardown: '<rootDir>/test/setup/ceph-global-teardown.js',
};
