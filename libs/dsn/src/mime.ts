// libmime, loaded at its first use: with its charset tables it is 2 MB of
// heap a process keeps, and the queue and delivery, which use this library's
// classifier and xtext only, never need it (bounce loads it at its first
// report, a few milliseconds once).
import { createRequire } from 'node:module';
import type Libmime from 'libmime';

let loaded: typeof Libmime | undefined;

/** libmime itself (a synchronous require: the header and report code that calls it is synchronous). */
export function libmime(): typeof Libmime {
  return (loaded ??= createRequire(__filename)('libmime') as typeof Libmime);
}
