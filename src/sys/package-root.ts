// Where crinc's own files are (build/wasm, build/bpf): the nearest folder at or above
// this module with a package.json, from src/ under vitest and from dist/src/ when built.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export class PackageRootError extends Error {
  override name = 'PackageRootError';
}

let root: string | undefined;

export function packageRoot(): string {
  if (root) return root;
  const start = dirname(fileURLToPath(import.meta.url));
  for (let dir = start; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return (root = dir);
    if (dirname(dir) === dir) throw new PackageRootError(`cannot find the crinc package root: no package.json in ${start} or any folder above it`);
  }
}
