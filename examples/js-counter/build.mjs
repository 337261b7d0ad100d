// Builds app.js into a Weir operator component with ComponentizeJS's API.
//
// Usage: node build.mjs WIT_DIR OUTPUT
//
// The API rather than `jco componentize`: the command line once failed offline to read
// the WIT folder and used over 11 GB of memory (shared/TOOLCHAIN.md).
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { componentize } from '@bytecodealliance/componentize-js';

const here = dirname(fileURLToPath(import.meta.url));
const [witDir, output, ...rest] = process.argv.slice(2);
if (!witDir || !output || rest.length > 0) {
  console.error('usage: node build.mjs WIT_DIR OUTPUT');
  process.exit(2);
}

const { component } = await componentize({
  sourcePath: resolve(here, 'app.js'),
  witPath: resolve(witDir),
  worldName: 'operator',
  // The operator needs no HTTP. stdio (console.* and uncaught errors to stderr), random
  // and clocks stay: the host links WASI 0.2 with nothing granted.
  disableFeatures: ['http', 'fetch-event'],
});
await mkdir(dirname(resolve(output)), { recursive: true });
await writeFile(output, component);
console.error(`js-counter: wrote ${output} (${component.length} bytes)`);
