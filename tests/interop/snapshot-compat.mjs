// Writes a known document into a room, or reads a room's whole document back, over the wire.
// Used to check that a data directory written by one server loads in the other:
//   node snapshot-compat.mjs write --url ws://127.0.0.1:PORT --room ROOM [--token T]
//   node snapshot-compat.mjs read  --url ws://127.0.0.1:PORT --room ROOM [--token T]
// `write` sends the writes of WRITES one patch at a time and waits for every ack; `read`
// prints the document a fresh client receives (reconnect from clock 0) as one JSON line.

import WebSocket from 'ws';
import { assertLocalUrl, parseArgs } from './lib/common.mjs';

const USAGE = 'usage: node snapshot-compat.mjs write|read --url ws://127.0.0.1:PORT --room ROOM [--token T]\n';
const [mode, ...rest] = process.argv.slice(2);
const args = parseArgs(rest, { '--url': 'string', '--room': 'string', '--token': 'string' }, USAGE);
if (!['write', 'read'].includes(mode) || !args.url || !args.room) {
  process.stderr.write(USAGE);
  process.exit(2);
}

/** Creates, edits, buffer deltas, a delete, and a delete of a key that never existed. */
export const WRITES = [
  { 'e1/Shape': { _exists: true, _version: null, x: 1, y: 2, label: 'first' } },
  { 'e2/Shape': { _exists: true, x: 5 }, 'SINGLETON/Camera': { _exists: true, zoom: 1.5 } },
  { 'e1/Shape': { x: 10, tags: ['a', 'b'] } },
  { 'e3/Stroke': { _exists: true, pts: { __buf: 1, len: 4, runs: [[0, [1, 2, 3, 4]]] } } },
  { 'e3/Stroke': { pts: { __buf: 1, len: 6, runs: [[4, [5, 6]]] } } },
  { 'e2/Shape': { _exists: false } },
  { 'ghost/Shape': { _exists: false } },
  { 'e1/Shape': { meta: { nested: { deep: [1, { x: null }] } } } },
];

const url = new URL(assertLocalUrl(args.url, '--url'));
url.searchParams.set('roomId', args.room);
url.searchParams.set('clientId', `compat-${mode}-${process.pid}`);
url.searchParams.set('token', args.token ?? 'none');

const ws = new WebSocket(url);
const timer = setTimeout(() => fail('timed out'), 10_000);
function fail(why) {
  process.stderr.write(`snapshot-compat ${mode}: ${why}\n`);
  process.exit(1);
}
ws.on('error', (e) => fail(e.message));
ws.on('close', (code, reason) => fail(`closed early: ${code} ${reason}`));

let pending = 0;
ws.on('open', () => {
  ws.send(JSON.stringify({ type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 }));
});
ws.on('message', (data) => {
  const msg = JSON.parse(String(data));
  if (mode === 'read') {
    if (msg.type === 'patch' && msg.clientId === '' && msg.documentPatches) {
      process.stdout.write(`${JSON.stringify(msg.documentPatches[0])}\n`);
    }
    if (msg.type === 'synced') done();
    return;
  }
  if (msg.type === 'synced') {
    WRITES.forEach((patch, i) => {
      pending++;
      ws.send(JSON.stringify({ type: 'patch', messageId: `w${i}`, documentPatches: [patch] }));
    });
  }
  if (msg.type === 'ack' && --pending === 0) done();
});

function done() {
  clearTimeout(timer);
  ws.removeAllListeners('close');
  ws.close();
  ws.on('close', () => process.exit(0));
}
