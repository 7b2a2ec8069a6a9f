// Jest config of the root-VM suite: test/vm/**/*.vm.test.ts, run as root
// inside the QEMU guest by `npm run test:vm` (scripts/vm/run-vm-tests.mjs).
// TypeScript is transpiled on the host beforehand (scripts/vm/ts-transform.cjs).
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const setup = path.join(__dirname, 'test', 'setup', 'dispose-symbols.ts');

/** @type {import('jest').Config} */
module.exports = {
  rootDir: __dirname,
  testEnvironment: 'node',
  roots: ['<rootDir>/test/vm'],
  testMatch: ['**/*.vm.test.ts'],
  transform: {
    '^.+\\.ts$': '<rootDir>/scripts/vm/ts-transform.cjs',
  },
  // The guest's root filesystem is the host's, read-only: keep jest's
  // cache on the guest's tmpfs.
  // Same setup as the host suite (Symbol.dispose for `using` under jest).
  setupFiles: fs.existsSync(setup) ? [setup] : [],
  cacheDirectory: path.join(os.tmpdir(), 'jest-dmthin-vm'),
  watchman: false,
  // dm devices and loop devices are machine-wide: one test file at a time.
  maxWorkers: 1,
  // Each test with its time: the log then shows where the guest's minutes go.
  verbose: true,
  // Generous: under emulation on a loaded 2-core host, tests that take 60 s idle
  // have taken 140 s (a hang still fails, after 5 minutes).
  testTimeout: 300000,
  // A guest-kernel fault can leave an ioctl that never returns on a libuv
  // thread; jest must still exit and report (the runner then sees the fault).
  forceExit: true,
};
