// Not a test on its own (it does not match *.test.ts): ceph.test.ts runs it in
// a child jest with Ceph hidden, to check that S3 tests are reported as
// skipped loudly, or fail under DMTHIN_REQUIRE_S3=1.
import { describeS3 } from './ceph';

describeS3('gated S3 block', () => {
  it('inner test', () => {
    expect(1).toBe(1);
  });
});

it('ungated test', () => {
  expect(1).toBe(1);
});
