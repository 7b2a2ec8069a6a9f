// Not a test on its own (it does not match *.test.ts): fixtures.test.ts runs
// it in a child jest with the reference tools hidden, to check that oracle
// tests are reported as skipped loudly, or fail under DMTHIN_REQUIRE_ORACLE=1.
import { describeOracle, itOracle } from './fixtures';

describeOracle('gated block', () => {
  it('inner test', () => {
    expect(1).toBe(1);
  });
});

itOracle('gated test', () => {
  expect(1).toBe(1);
});

it('ungated test', () => {
  expect(1).toBe(1);
});
