// A Node process with a heap like a real service's, for the page corpus: object graphs,
// strings, maps, JSON text, typed arrays with small numbers, a buffer cache. Prints
// "ready <rss>" once built, then idles until killed.
interface Item {
  id: number;
  name: string;
  tags: string[];
  score: number;
  parent: Item | null;
}

const items: Item[] = [];
for (let i = 0; i < 250_000; i++) {
  items.push({ id: i, name: `item-${i}`, tags: [`t${i % 7}`, `g${i % 13}`], score: (i % 1000) / 8, parent: i > 0 ? items[(i * 7) % i]! : null });
}
const sessions = new Map<string, { user: string; hits: number; last: string }>();
for (let i = 0; i < 80_000; i++) sessions.set(`sess-${(i * 2654435761) >>> 0}`, { user: `user${i % 5000}@example.org`, hits: i % 97, last: new Date(1.7e12 + i * 1000).toISOString() });
const logLines: string[] = [];
for (let i = 0; i < 40_000; i++) logLines.push(`${new Date(1.7e12 + i * 250).toISOString()} INFO worker-${i % 8} handled request ${i} in ${(i % 300) / 10} ms`);
const json = JSON.stringify(items.slice(0, 20_000).map(({ parent: _parent, ...rest }) => rest));
const counters = new Int32Array(2_000_000).map((_, i) => i % 50);
const cache = Buffer.alloc(8 << 20);
for (let o = 0; o < cache.length; o += 4096) cache.write(`cache entry ${o / 4096} `.repeat(20), o);

(globalThis as Record<string, unknown>).kept = { items, sessions, logLines, json, counters, cache };
console.log(`ready ${process.memoryUsage().rss}`);
setInterval(() => {}, 1 << 30);
