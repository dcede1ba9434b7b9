// A Node.js process's heap as real programs leave it: a Debian package list
// parsed into objects with Maps for lookups and a JSON snapshot of part of
// it, and numbers in arrays (a JS array of doubles, a Float64Array, an
// Int32Array). hack/realmem starts it, dumps its anonymous memory once it
// prints "ready", then closes stdin.
//
//   node heap.js PACKAGES_FILE MAX_PACKAGES FLOATS
'use strict';
const fs = require('fs');

const [path, limitArg, floatsArg] = process.argv.slice(2);
const limit = Number(limitArg);
const nfloats = Number(floatsArg);

const pkgs = [];
let para = {};
let key = null;
for (const line of fs.readFileSync(path, 'utf8').split('\n')) {
  if (pkgs.length >= limit) break;
  if (line === '') {
    if (key !== null) pkgs.push(para);
    para = {};
    key = null;
  } else if ((line[0] === ' ' || line[0] === '\t') && key !== null) {
    para[key] += '\n' + line.slice(1);
  } else {
    const i = line.indexOf(':');
    if (i > 0) {
      key = line.slice(0, i);
      para[key] = line.slice(i + 1).trim();
    }
  }
}

const byName = new Map(pkgs.map((p) => [p.Package, p]));
const deps = new Map();
const rdeps = new Map();
for (const [name, p] of byName) {
  const ds = (p.Depends || '').split(',').map((d) => d.trim().split(/\s*[(|]/)[0]).filter((d) => d);
  deps.set(name, ds);
  for (const d of ds) {
    if (!rdeps.has(d)) rdeps.set(d, []);
    rdeps.get(d).push(name);
  }
}
const snapshot = JSON.stringify(pkgs.slice(0, pkgs.length >> 2));

// A small deterministic generator: Math.random cannot be seeded.
let seed = 17;
const rnd = () => {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return seed / 4294967296;
};
const series = [];
for (let i = 0; i < nfloats; i++) {
  series.push(20 + 5 * Math.sin(i / 500) + (rnd() + rnd() + rnd() - 1.5) * 0.3);
}
const prices = new Float64Array(nfloats);
for (let i = 0; i < nfloats; i++) prices[i] = Math.round(rnd() * 50000) / 100;
const counts = new Int32Array(nfloats);
for (let i = 0; i < nfloats; i++) counts[i] = Math.floor(rnd() * 1000);

globalThis.keep = [pkgs, byName, deps, rdeps, snapshot, series, prices, counts];
console.log('ready');
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
