/**
 * Where a CodecPool worker starts.
 *
 * Built (dist/), the pool's module is pool.js and the worker is the
 * compiled codec-worker.js beside it. Run from the TypeScript sources (the
 * tests under vitest, which transpiles in its own module runner), there is
 * no codec-worker.js, and a worker thread is a plain Node.js thread that
 * cannot load .ts files. The worker then starts from a small bootstrap
 * module that registers a module hook (node:module register) transpiling
 * the codec's .ts files with the `typescript` package, then imports
 * codec-worker.ts: the tests run the real worker source, never a stale
 * build.
 */
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const WORKER_MODULE = 'codec-worker';

/**
 * Module hooks for the source bootstrap: a relative ".js" import from a
 * .ts module that has no .js file means its .ts sibling (NodeNext import
 * style), and .ts modules are transpiled (types erased) as ES modules.
 * TYPESCRIPT_URL is replaced by the file URL of the `typescript` package.
 */
const TS_HOOKS_SOURCE = `
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
const ts = (await import(TYPESCRIPT_URL)).default;
export async function resolve(specifier, context, nextResolve) {
  if (specifier.startsWith('.') && specifier.endsWith('.js') && context.parentURL?.endsWith('.ts')) {
    const url = new URL(specifier, context.parentURL);
    if (!existsSync(fileURLToPath(url))) return nextResolve(url.href.slice(0, -'.js'.length) + '.ts', context);
  }
  return nextResolve(specifier, context);
}
export async function load(url, context, nextLoad) {
  if (!url.startsWith('file:') || !url.endsWith('.ts')) return nextLoad(url, context);
  const fileName = fileURLToPath(url);
  const { outputText } = ts.transpileModule(readFileSync(fileName, 'utf8'), {
    fileName,
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, inlineSourceMap: true },
  });
  return { format: 'module', source: outputText, shortCircuit: true };
}
`;

function dataUrl(source: string): URL {
  return new URL(`data:text/javascript,${encodeURIComponent(source)}`);
}

/** The URL to give `new Worker()` for a pool whose module is at poolModuleUrl. */
export function codecWorkerUrl(poolModuleUrl: string): URL {
  if (!poolModuleUrl.endsWith('.ts')) return new URL(`./${WORKER_MODULE}.js`, poolModuleUrl);
  const typescriptUrl = pathToFileURL(createRequire(poolModuleUrl).resolve('typescript')).href;
  const hooks = TS_HOOKS_SOURCE.replace('TYPESCRIPT_URL', JSON.stringify(typescriptUrl));
  const workerSource = new URL(`./${WORKER_MODULE}.ts`, poolModuleUrl).href;
  return dataUrl(`
import { register } from 'node:module';
register(${JSON.stringify(dataUrl(hooks).href)});
await import(${JSON.stringify(workerSource)});
`);
}
