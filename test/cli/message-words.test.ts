/**
 * `dmthin message` reads the verb of a message as the kernel does (found by an
 * outside hunt: 'create_thin 76' as one argument, or ' create_thin', got past
 * the refusal of LVM-recorded changes). The kernel splits the text with
 * dm_split_args (white space separates, a backslash escapes the next
 * character) and compares the verb with strcasecmp.
 */
import { firstWord } from '../../src/cli/message';

test.each([
  ['create_thin 7', 'create_thin'],
  [' create_thin', 'create_thin'],
  [' \tcreate_snap 1 2', 'create_snap'],
  ['cre\\ate_thin 5', 'create_thin'],
  ['set_transaction_id\t1 2', 'set_transaction_id'],
  ['release_metadata_snap', 'release_metadata_snap'],
  ['a\\ b c', 'a b'],
  ['', ''],
])('%j -> %j', (text, verb) => {
  expect(firstWord(text)).toBe(verb);
});
