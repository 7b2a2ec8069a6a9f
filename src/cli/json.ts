/** JSON for CLI output: bigints print as exact integers (JSON has no size limit). */
export function toJson(v: unknown, indent = 2): string {
  const marks: string[] = [];
  const s = JSON.stringify(
    v,
    (_k, x) => {
      if (typeof x === 'bigint') {
        marks.push(x.toString());
        return `\u0000big${marks.length - 1}\u0000`;
      }
      return x;
    },
    indent,
  );
  return s.replace(/"\\u0000big(\d+)\\u0000"/g, (_m, i) => marks[Number(i)]);
}
