#!/usr/bin/env -S node --v8-pool-size=1
/**
 * The dmthin command line's entry point: sets up the run (startup.ts), then
 * runs program.ts. It is the one file of the CLI that Node compiles from
 * source on every run (the code cache is installed by it), hence so short.
 *
 * The #! line runs V8's background work (optimizing compiles, GC helpers) on
 * one thread, not four: each thread's malloc arena kept the compilers' freed
 * zones, 3-4 MiB apiece (check at 40M mappings: about 85 -> 79 MiB peak RSS,
 * wall 0.99x). It is a Node option, not a V8 flag: V8 flags are set at run
 * time (startup.ts, tuneCollector), since any given at start makes V8 refuse
 * the code caches of Node's built-in modules. `env -S` splits the options
 * (coreutils 8.30 and later).
 */
// First, before anything else loads: a run of the CLI compiles its modules
// with V8's cached code (a cache file per command) and defers what commander
// loads but never uses (see startup.ts); the library does neither.
if (require.main === module) {
  const startup = require('./startup') as typeof import('./startup');
  startup.sizeThreadPool(process.argv[2]);
  startup.tuneCollector();
  startup.installCodeCache(startup.cacheGroup(process.argv[2], Object.keys((require('./commands') as typeof import('./commands')).COMMANDS)));
  startup.deferCommanderChildProcess();
  startup.resolveCliModulesDirectly();
  (require('./program') as typeof import('./program')).run(process.argv.slice(2));
}
export { main } from './program';
