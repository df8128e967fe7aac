#!/usr/bin/env node
// Proves the harness against the reference server: starts two reference servers
// (both with tokens.json), runs the differential between them (scripted set + seeds)
// and every woven scenario (plus token-refresh) against the first one.
//
//   node selftest.mjs [--seeds 1,2,3] [--steps 200]
//
// Exit 0 only if everything passed. Servers are started and stopped by this script.

import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from './lib/common.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const args = parseArgs(process.argv.slice(2), { '--seeds': 'string', '--steps': 'int' },
  'usage: node selftest.mjs [--seeds 1,2,3] [--steps 200]\n');
const tokens = join(here, 'tokens.json');

function startServer(extra) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(here, 'reference-server.mjs'), '--port', '0', ...extra], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let buf = '';
    const onData = (d) => {
      buf += d;
      const m = /^listening on (127\.0\.0\.1:\d+)$/m.exec(buf);
      if (m) {
        child.stdout.off('data', onData);
        resolve({ child, url: `ws://${m[1]}` });
      }
    };
    child.stdout.on('data', onData);
    child.on('exit', (code) => reject(new Error(`reference server exited early (${code})`)));
  });
}

function run(script, scriptArgs) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(here, script), ...scriptArgs], { stdio: 'inherit' });
    child.on('exit', (code) => resolve(code));
  });
}

async function stop(server) {
  await new Promise((resolve) => {
    server.child.removeAllListeners('exit');
    server.child.on('exit', resolve);
    server.child.kill('SIGTERM');
  });
}

const t0 = Date.now();
const a = await startServer(['--tokens', tokens]);
const b = await startServer(['--tokens', tokens]);
const results = [];
try {
  results.push(['differential', await run('differential.mjs', [
    '--a', a.url, '--b', b.url, '--tokens', tokens, '--script', 'all',
    '--seed', args.seeds ?? '1,2,3', '--steps', String(args.steps ?? 200),
  ])]);
  results.push(['woven-scenarios all', await run('woven-scenarios.mjs', ['--url', a.url, '--scenario', 'all', '--token', 'rw-alice'])]);
  results.push(['woven-scenarios token-refresh', await run('woven-scenarios.mjs', [
    '--url', a.url, '--scenario', 'token-refresh', '--token', 'rw-alice', '--readonly-token', 'ro-bob',
  ])]);
} finally {
  await stop(a);
  await stop(b);
}
const failed = results.filter(([, code]) => code !== 0);
for (const [name, code] of results) process.stdout.write(`selftest: ${name}: ${code === 0 ? 'ok' : `FAILED (exit ${code})`}\n`);
process.stdout.write(`selftest: ${failed.length ? 'FAILED' : 'ok'} in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
process.exit(failed.length ? 1 : 0);
