/**
 * thin_ls's field names and what each needs: what `dmthin ls` registers
 * (its help lists them) and checks before it reads anything, apart from the
 * table and usage code of ls.ts, which loads only when the command runs.
 */
import { UsageError } from '../errors';

export const LS_FIELDS = [
  'DEV',
  'MAPPED_BLOCKS',
  'EXCLUSIVE_BLOCKS',
  'SHARED_BLOCKS',
  'MAPPED_SECTORS',
  'EXCLUSIVE_SECTORS',
  'SHARED_SECTORS',
  'MAPPED_BYTES',
  'EXCLUSIVE_BYTES',
  'SHARED_BYTES',
  'MAPPED',
  'EXCLUSIVE',
  'SHARED',
  'TRANSACTION',
  'CREATE_TIME',
  'SNAP_TIME',
] as const;
export type LsField = (typeof LS_FIELDS)[number];
export const DEFAULT_LS_FIELDS: readonly LsField[] = ['DEV', 'MAPPED', 'CREATE_TIME', 'SNAP_TIME'];

/** Parses a thin_ls field list ("DEV,MAPPED"); a trailing comma is allowed, as thin_ls allows it. */
export function parseLsFields(spec: string): LsField[] {
  if (spec === '') return [];
  const parts = spec.split(',');
  if (parts[parts.length - 1] === '') parts.pop();
  return parts.map((p) => {
    if (!(LS_FIELDS as readonly string[]).includes(p)) throw new UsageError(`unknown field '${p}' (fields: ${LS_FIELDS.join(', ')})`);
    return p as LsField;
  });
}

/** Whether a field needs the mapping walk (EXCLUSIVE/SHARED and their variants). */
export function needsMappings(f: LsField): boolean {
  return f.startsWith('EXCLUSIVE') || f.startsWith('SHARED');
}
