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
  // The S3 tests' Ceph cluster: started by the first S3 test of a run, stopped here (test/helpers/ceph.ts).
  globalSetup: '<rootDir>/test/setup/ceph-global-setup.js',
  globalTeardown: '<rootDir>/test/setup/ceph-global-teardown.js',
};
