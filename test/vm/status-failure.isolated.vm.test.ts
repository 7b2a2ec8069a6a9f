/**
 * The failure modes of a pool, in a VM boot of their own: they make the
 * kernel's dm-thin take its metadata-error paths, and once (1 in ~5 loaded
 * runs, never reproduced with slub_debug) the 6.1 guest kernel's slab was
 * corrupted afterwards and later, unrelated tests crashed in the kernel.
 * Isolating them keeps such a kernel fault from failing the rest of the suite.
 *
 * needs_check after a failed metadata commit (dm-flakey error_writes under the
 * metadata device); Error (the status whose commit finds the metadata device
 * gone) and then Fail once the metadata device errors entirely.
 */
import { describeVm, useDmSandbox } from './helpers';
import { ddCmd, oneTarget, sh, swapTable } from './pool-helpers';
import { BLOCK, expectMessagesRefused, expectStatusMatches, poolWithThin, reloadPool } from './status-helpers';

describeVm('pool failure modes, against dmsetup', () => {
  const sandbox = useDmSandbox('status-failure');

  test('needs_check: a failed metadata commit (dm-flakey error_writes under the metadata device) leaves the pool ro + needs_check, for good', async () => {
    const sb = sandbox();
    const { tp, thin } = await poolWithThin(sb, { metaVia: 'dm' });
    sh(ddCmd(thin.path, { bs: BLOCK, seek: 0, count: 4, src: '/dev/zero' }));
    await expectStatusMatches(tp, [thin]); // committed

    const linear = oneTarget(tp.metaSectors, 'linear', `${tp.metaLoop.path} 0`);
    // Always "down" (up 0 s, down 1 s): writes fail, reads pass.
    await swapTable(tp.dm, tp.metaName!, oneTarget(tp.metaSectors, 'flakey', `${tp.metaLoop.path} 0 0 1 1 error_writes`));
    sh(`${ddCmd(thin.path, { bs: BLOCK, seek: 10, count: 1, src: '/dev/zero' })} 2>/dev/null; true`); // provisions; the commit fails
    await tp.pool.status(); // commits (fails) if the worker has not yet
    const s = await expectStatusMatches(tp, [thin]);
    expect(s).toMatchObject({ kind: 'working', mode: 'ro', needsCheck: true });
    await expectMessagesRefused(tp);

    // Even with a good metadata device again, the kernel keeps it read-only until repaired.
    await swapTable(tp.dm, tp.metaName!, linear);
    await reloadPool(tp, { features: [] });
    expect(await expectStatusMatches(tp, [thin])).toMatchObject({ mode: 'ro', needsCheck: true });
  });

  test('Error, then Fail: the metadata device fails entirely (error target); pool and thin report it; messages EOPNOTSUPP', async () => {
    const sb = sandbox();
    const { tp, thin } = await poolWithThin(sb, { metaVia: 'dm' });
    sh(ddCmd(thin.path, { bs: BLOCK, seek: 0, count: 4, src: '/dev/zero' }));
    await expectStatusMatches(tp, [thin]);

    await swapTable(tp.dm, tp.metaName!, oneTarget(tp.metaSectors, 'error', ''));
    // No writes now (the pool's worker would commit them within a second and
    // fail first): the next status commits, the commit fails, so does the
    // abort (the superblock cannot be re-read), the pool fails while that
    // status is being made and its queries fail: "Error". Then "Fail".
    expect(await tp.pool.status()).toEqual({ kind: 'error' });
    const s = await expectStatusMatches(tp, [thin]);
    expect(s).toEqual({ kind: 'fail' });
    expect(await thin.status()).toEqual({ kind: 'fail' });
    await expect(tp.pool.workingStatus()).rejects.toMatchObject({ code: 'EIO' });
    await expectMessagesRefused(tp);
  });
});
