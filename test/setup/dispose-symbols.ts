// Jest runs tests in a vm context whose Symbol lacks Node's Symbol.dispose and
// Symbol.asyncDispose. Node defines them with Symbol.for, so the same symbols
// can be installed here and `using` / `await using` behave as in plain Node.
const S = Symbol as unknown as { dispose?: symbol; asyncDispose?: symbol };
S.dispose ??= Symbol.for('nodejs.dispose');
S.asyncDispose ??= Symbol.for('nodejs.asyncDispose');
