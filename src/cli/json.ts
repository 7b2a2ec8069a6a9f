/**
 * JSON for CLI output, as docs/json.md says: a bigint (a u64 the format lets
 * pass 2^53) prints as a decimal string, so JSON.parse never rounds it and the
 * field's type does not depend on its value.
 */
export function toJson(v: unknown, indent = 2): string {
  return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x), indent);
}
