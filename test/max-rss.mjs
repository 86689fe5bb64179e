// Loaded into every crinc process of a test (NODE_OPTIONS=--import): at exit, appends
// "<pid> <argv...> maxrss_kib" to $CRINC_TEST_MAX_RSS, so a test can bound each one's
// peak RSS (getrusage's ru_maxrss: the process's own high-water mark).
import { appendFileSync } from 'node:fs';

const out = process.env.CRINC_TEST_MAX_RSS;
if (out) {
  process.on('exit', () => {
    appendFileSync(out, `${process.pid} ${process.resourceUsage().maxRSS} ${process.argv.slice(2).join(' ')}\n`);
  });
}
