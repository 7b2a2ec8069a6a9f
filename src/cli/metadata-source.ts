/**
 * Resolves the METADATA argument of read commands into an open ThinMetadata.
 * (A pool name is resolved to its metadata device by the kernel bridge.)
 */
import { ThinMetadata } from '../thin/metadata';
import { parseIntArg } from './common';

export interface MetadataSnapOpts {
  metadataSnap?: boolean;
  metadataSnapBlock?: string;
}

export function snapOption(o: MetadataSnapOpts): boolean | number | undefined {
  if (o.metadataSnapBlock !== undefined) return parseIntArg('--metadata-snap block', o.metadataSnapBlock);
  return o.metadataSnap ? true : undefined;
}

export async function openMetadata(path: string, o: MetadataSnapOpts): Promise<ThinMetadata> {
  return ThinMetadata.open(path, { metadataSnap: snapOption(o) });
}
