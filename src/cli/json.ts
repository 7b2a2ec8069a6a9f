/**
 * JSON for CLI output, as docs/json.md says: a bigint (a u64 the format lets
 * pass 2^53) prints as a decimal string, so JSON.parse never rounds it and the
 * field's type does not depend on its value.
 */
export function toJson(v: unknown, indent = 2): string {
  return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x), indent);
}

/**
 * `v` with each of `keys` it lacks (or holds as undefined) set to null: a
 * record's shape does not depend on its content (docs/json.md), where the
 * library leaves an optional field out.
 */
export function withNulls<T extends object>(v: T, keys: readonly string[]): T {
  const o: Record<string, unknown> = { ...(v as Record<string, unknown>) };
  for (const k of keys) o[k] ??= null;
  return o as T;
}

/** A dm-thin backup's source as JSON: fields older backups or other sources lack are null. */
export function backupSourceJson(source: unknown): unknown {
  return source !== null && typeof source === 'object' && (source as { kind?: unknown }).kind === 'dm-thin' ? withNulls(source, ['mappingRoot', 'dataImage']) : source;
}
