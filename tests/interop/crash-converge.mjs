#!/usr/bin/env node
// Three REAL clients (`WebsocketAdapter` from @woven-ecs/canvas-store 2.0.1) edit the same keys
// while the Rust test (tests/crash.rs, npm_clients_converge_across_kill_9_restarts) kill -9s the
// server and restarts it on the same port; the clients reconnect by themselves (backoff
// 0.5-10 s). Once the edits stop, every client and a late joiner must hold the same document.
//
//   node crash-converge.mjs --url ws://127.0.0.1:PORT [--seed N] [--timeout-ms N]
//
// Control protocol, one line each way:
//   stdout `ready`      all clients synced, the shared keys exist everywhere; edits are running
//   stdout `sent`       (from then on until `done`) a client just sent a document patch and has
//                       not had its ack yet: the test kills the server on one of these
//   stdin  `online?`    stdout `online` once every client is connected and has had `synced` on
//                       that connection (edits keep running)
//   stdin  `done`       edits stop; wait until every client is quiet and all views are equal,
//                       add a late joiner and compare; stdout `converged ...`, exit 0
// Other stdout lines start with `# `. A failure is written to stderr, exit 1.
//
// Each client is driven the way CanvasStore.sync() drives it (as in woven-scenarios.mjs): every
// 16 ms it pull()s, applies what it pulled to its view, makes its edits on top, push()es. Edits:
// partial edits of four shared keys (mostly two, so in-flight patches collide), creates of keys
// of its own and partial edits of those. No deletes: deletion races are client-side
// (see woven-scenarios.mjs, delete-race) and not what this test is about.
//
// The driver works around one CLIENT bug (@woven-ecs/canvas-store 2.0.1, WebsocketAdapter.pull):
// pull() empties `offlineBuffer` whenever it applies pending document patches, even while the
// socket is down. When the server dies, the adapter moves its unacked in-flight patches into
// `offlineBuffer` (requeueInFlight) to send them with the next `reconnect`; a broadcast that
// arrived just before the close is still pending, the next tick's pull() applies it and drops
// the buffer, and those edits are lost for good (the author's view keeps them: the clients never
// converge). So a tick skips pull() while the offline buffer has not reached the server (offline,
// or its `reconnect` not answered with `synced` yet); the converged line counts these ticks.
// The same pull() also strips every pending field that the offline buffer holds, even after the
// `reconnect` carrying that buffer was answered: a broadcast the server made AFTER applying the
// buffer (another client's later write of the same field) is then dropped, and this client keeps
// its older value for good. The buffer is only emptied by the next flush, and the tick pulls
// before it pushes, so a broadcast arriving between `synced` and that tick is lost. Once `synced`
// has arrived, the server holds the buffer (weft sends `synced` only when the writes it carried
// are durable), so the driver empties it as `synced` arrives; the converged line counts these
// too. Emptying it must keep the one strip that is right: everything pending when `synced`
// arrives (the reconnect's diff, broadcasts queued before the reconnect) was ordered by the
// server BEFORE the buffer, so the buffer's fields are stripped from those patches first, as
// pull() would (without this, a client's own offline edit is overwritten in its view by an older
// value from the diff, while the server and the others keep the edit).
// Third: between sending `reconnect` (which carries the offline buffer) and its `synced`, the
// adapter's next flush sends the buffer again as a `patch` and empties it; `synced` then finds
// nothing to strip, and a broadcast pending from before the drop (ordered before the buffer)
// is pulled over the client's own offline edit. So a tick does nothing in that window.
//
// A `resync` from the server fails the run: a client only learns clocks from acks and
// broadcasts, which weft sends once the write is durable, so after a restart its clock can never
// be behind a client's cursor.

import { createInterface } from 'node:readline';
import WebSocket from 'ws';
import { WebsocketAdapter } from '@woven-ecs/canvas-store';
import {
  applyPatchToView,
  assertLocalUrl,
  canon,
  jsonEqual,
  parseArgs,
  randomId,
  rng,
  short,
  sleep,
} from './lib/common.mjs';

// Every frame a client sends is traced (see Client.trace), found by the clientId in its URL.
const byClientId = new Map();
class TracedWebSocket extends WebSocket {
  constructor(url, ...rest) {
    super(url, ...rest);
    this.owner = byClientId.get(new URL(url).searchParams.get('clientId'));
  }
  send(data, ...rest) {
    this.owner?.trace('sent', String(data));
    return super.send(data, ...rest);
  }
}
globalThis.WebSocket = TracedWebSocket;
const TRACE_LEN = 3000;

const ORIGIN_ECS = 1; // Origin.ECS in @woven-ecs/canvas-store
const TICK_MS = 16;

const USAGE = `usage: node crash-converge.mjs --url ws://127.0.0.1:PORT [--seed N] [--timeout-ms N]
--seed        seed of the edit choices (default: the clock)
--timeout-ms  deadline for convergence after \`done\` and for \`online\` (default 30000)
`;
const args = parseArgs(
  process.argv.slice(2),
  { '--url': 'string', '--seed': 'int', '--timeout-ms': 'int' },
  USAGE,
);
if (!args.url) {
  process.stderr.write(USAGE);
  process.exit(2);
}
assertLocalUrl(args.url, '--url');
const TIMEOUT_MS = args.timeoutMs ?? 30000;
const r = rng(args.seed ?? Date.now());

const say = (line) => process.stdout.write(`${line}\n`);
let announceSends = false;

const ticker = new Set();
setInterval(() => {
  for (const c of ticker) c.tick();
}, TICK_MS).unref();

// The fields of `patch` that `mask` does not hold, as the adapter's own (unexported) strip():
// a deletion in `patch` is kept, a key that `mask` deletes is dropped whole.
function stripFields(patch, mask) {
  const result = {};
  for (const [key, value] of Object.entries(patch)) {
    const masked = mask[key];
    if (masked === undefined || value._exists === false) {
      result[key] = value;
      continue;
    }
    if (masked._exists === false) continue;
    const kept = Object.fromEntries(Object.entries(value).filter(([field]) => !(field in masked)));
    if (Object.keys(kept).length > 0) result[key] = kept;
  }
  return result;
}

class Client {
  constructor(room, name) {
    this.name = name;
    this.doc = {};
    this.queued = [];
    this.inTick = null;
    this.editor = null;
    this.edits = 0;
    this.own = [];
    this.opens = 0;
    this.syncedHere = false; // `synced` arrived on the current connection
    this.syncs = 0;
    this.resyncs = 0;
    this.cutOff = 0; // unacked patches in flight when a connection dropped
    this.deferredPulls = 0; // ticks that skipped pull() to keep an unsent offline buffer
    this.deliveredBuffers = 0; // offline buffers emptied once their `reconnect` was answered
    this.room = room;
    this.events = []; // the last TRACE_LEN frames, edits and pulls, printed when a run fails
    this.clientId = randomId(name);
    byClientId.set(this.clientId, this);
    this.adapter = new WebsocketAdapter({
      url: args.url,
      clientId: this.clientId,
      documentId: room,
      usePersistence: false,
      components: [],
      singletons: [],
      onConnectivityChange: (online) => {
        this.trace(online ? 'online' : 'offline', '');
        this.syncedHere = false;
        if (online) this.opens++;
        // Called before the adapter requeues its unacked patches: these were cut off.
        else this.cutOff += this.adapter.inFlight.size;
      },
    });
    // Watch the frames the adapter handles (it calls this.handleMessage for each one).
    const handle = this.adapter.handleMessage.bind(this.adapter);
    this.adapter.handleMessage = (data) => {
      let type;
      try {
        type = JSON.parse(String(data)).type;
      } catch {
        type = undefined;
      }
      this.trace('received', String(data));
      if (type === 'synced') {
        this.syncedHere = true;
        this.syncs++;
        this.deliverOfflineBuffer();
      } else if (type === 'resync') {
        this.resyncs++;
        say(`# ${this.name}: resync ${short(String(data), 200)}`);
      }
      handle(data);
    };
  }

  async start() {
    await this.adapter.init();
    ticker.add(this);
  }

  online() {
    return this.adapter.isOnline && this.syncedHere;
  }

  // The reconnect that `synced` answered delivered the offline buffer (the header's second
  // workaround): strip its fields from what is pending (ordered before it), then empty it.
  deliverOfflineBuffer() {
    const a = this.adapter;
    if (Object.keys(a.offlineBuffer).length === 0) return;
    a.pendingDocumentPatches = a.pendingDocumentPatches
      .map((patch) => stripFields(patch, a.offlineBuffer))
      .filter((patch) => Object.keys(patch).length > 0);
    a.clearPersistedOfflineBuffer();
    this.deliveredBuffers++;
  }

  tick() {
    // Work around a CLIENT bug (see the header): while the offline buffer has not reached the
    // server (offline, or the reconnect carrying it not answered yet), pull() would clear it.
    const a = this.adapter;
    const unsent = Object.keys(a.offlineBuffer).length > 0 && !this.syncedHere;
    if (unsent && a.pendingDocumentPatches.length > 0) this.deferredPulls++;
    // Its `reconnect` is out but not answered (the header's third workaround): no push either.
    if (unsent && a.isOnline) return;
    const pulled = unsent ? [] : a.pull();
    for (const m of pulled) {
      if (m.syncBehavior === 'document') {
        this.trace('pulled', JSON.stringify(m.patch));
        applyPatchToView(this.doc, m.patch);
      }
    }
    // Edit only when this push flushes at once: an edit waiting in the send buffer is not
    // protected from broadcasts pulled meanwhile (a client-side race, see woven-scenarios.mjs).
    let local = [];
    if (this.flushReady()) {
      local = this.queued;
      this.queued = [];
      for (const m of local) applyPatchToView(this.doc, m.patch);
      if (this.editor) {
        this.inTick = local;
        try {
          this.editor(this);
        } finally {
          this.inTick = null;
        }
      }
    }
    const before = this.adapter.inFlight.size;
    this.adapter.push([...local, ...pulled]);
    // Lets the test kill the server while this patch waits for its ack.
    if (announceSends && this.adapter.inFlight.size > before) say('sent');
  }

  flushReady() {
    const a = this.adapter;
    if (!a.isOnline) return true; // offline edits go to the offline buffer
    return performance.now() - a.lastSendTime >= a.sendInterval;
  }

  trace(what, text) {
    this.events.push(`${performance.now().toFixed(0).padStart(7)} ${what} ${text}`);
    if (this.events.length > TRACE_LEN) this.events.splice(0, this.events.length - TRACE_LEN);
  }

  /** The traced events that mention `key`, and every ack, `synced` and connection change. */
  traceOf(key) {
    return this.events.filter(
      (e) => e.includes(key) || /"type":"(ack|synced)"/.test(e) || / (online|offline) $/.test(e),
    );
  }

  edit(patch) {
    this.trace('edit', JSON.stringify(patch));
    this.edits++;
    const m = { patch, origin: ORIGIN_ECS, syncBehavior: 'document' };
    if (this.inTick) {
      applyPatchToView(this.doc, patch);
      this.inTick.push(m);
    } else {
      this.queued.push(m);
    }
  }

  quiet() {
    const a = this.adapter;
    return (
      this.queued.length === 0 &&
      a.inFlight.size === 0 &&
      a.documentSendBuffer.length === 0 &&
      Object.keys(a.offlineBuffer).length === 0 &&
      a.pendingDocumentPatches.length === 0
    );
  }

  close() {
    ticker.delete(this);
    this.adapter.close();
  }
}

async function waitFor(cond, what, timeoutMs = TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'function' ? what() : what}`);
    }
    await sleep(20);
  }
}

function viewDiff(views) {
  const keys = new Set();
  for (const [, v] of views) for (const k of Object.keys(v)) keys.add(k);
  const lines = [];
  for (const k of [...keys].sort()) {
    const vals = views.map(([, v]) => v[k]);
    if (vals.every((x) => jsonEqual(x, vals[0]))) continue;
    lines.push(`  key ${k}:`);
    for (let i = 0; i < views.length; i++) {
      lines.push(`    ${views[i][0].padEnd(6)} ${vals[i] === undefined ? '(absent)' : short(vals[i], 200)}`);
    }
    if (lines.length > 60) {
      lines.push('  ...');
      break;
    }
  }
  return lines.join('\n');
}

/** The differing keys with the server's view (a fresh client's), and each client's trace of them. */
async function diagnose(clients) {
  const views = clients.map((c) => [c.name, c.doc]);
  const probe = new Client(clients[0].room, 'server');
  try {
    await probe.start();
    await waitFor(() => probe.online() && probe.quiet(), 'a fresh client to sync', 5000);
    views.push([probe.name, probe.doc]);
  } catch (e) {
    views.push(['server', { error: String(e) }]);
  }
  const lines = [viewDiff(views)];
  const keys = new Set();
  for (const [, v] of views) for (const k of Object.keys(v)) keys.add(k);
  for (const k of keys) {
    if (views.every(([, v]) => jsonEqual(v[k], views[0][1][k]))) continue;
    for (const c of clients) lines.push(`  trace of ${c.name} for ${k}:`, ...c.traceOf(k).slice(-250).map((e) => `    ${short(e, 400)}`));
  }
  probe.close();
  return lines.join('\n');
}

const allEqual = (views) => views.every(([, v]) => jsonEqual(v, views[0][1]));

/** Every client quiet and all views equal, twice in a row 150 ms apart. */
async function converge(clients, label) {
  const deadline = Date.now() + TIMEOUT_MS;
  let since = 0;
  for (;;) {
    const views = clients.map((c) => [c.name, c.doc]);
    if (clients.every((c) => c.online() && c.quiet()) && allEqual(views)) {
      if (!since) since = Date.now();
      else if (Date.now() - since >= 150) return;
    } else {
      since = 0;
    }
    if (Date.now() > deadline) {
      const busy = clients.filter((c) => !(c.online() && c.quiet())).map((c) => c.name);
      throw new Error(
        `${label}: no convergence after ${TIMEOUT_MS} ms` +
          (busy.length ? ` (offline or busy: ${busy.join(', ')})` : '') +
          `\n${(await diagnose(clients)) || '  (views equal)'}`,
      );
    }
    await sleep(25);
  }
}

const FIELDS = ['x', 'y', 'color', 'label'];
const SHARED = ['s0/shape', 's1/shape', 's2/shape', 's3/shape'];

function fieldEdit(c, keys) {
  const live = keys.filter((k) => c.doc[k]);
  if (live.length === 0) return;
  const patch = {};
  for (let i = r.range(1, 2); i > 0; i--) {
    const v = (patch[r.pick(live)] ??= {});
    for (let j = r.range(1, 3); j > 0; j--) {
      const f = r.pick(FIELDS);
      v[f] = f === 'x' || f === 'y' ? r.int(1000) : `${c.name}#${c.edits}`;
    }
  }
  c.edit(patch);
}

function record(c, label) {
  return { _exists: true, x: r.int(1000), y: r.int(1000), color: `${c.name}-color`, label };
}

function editor(c) {
  const roll = r.next();
  if (roll < 0.08) {
    const key = `${c.name}-${c.own.length}/shape`;
    c.own.push(key);
    c.edit({ [key]: record(c, `${c.name} made ${key}`) });
  } else if (roll < 0.25 && c.own.length > 0) {
    fieldEdit(c, c.own);
  } else {
    fieldEdit(c, r.chance(0.7) ? SHARED.slice(0, 2) : SHARED);
  }
}

async function main() {
  const room = randomId('crash');
  const clients = ['A', 'B', 'C'].map((n) => new Client(room, n));
  const [A] = clients;
  await A.start();
  await waitFor(() => A.online(), 'A to sync');
  await Promise.all(clients.slice(1).map((c) => c.start()));
  await waitFor(
    () => clients.every((c) => c.online() && c.adapter.connectedUsers >= clients.length),
    'all clients to sync and see each other',
  );
  A.edit(Object.fromEntries(SHARED.map((k) => [k, record(A, 'shared')])));
  await converge(clients, 'after creating the shared keys');
  for (const c of clients) c.editor = editor;
  announceSends = true;
  say('ready');

  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    const command = line.trim();
    if (command === 'online?') {
      await waitFor(
        () => clients.every((c) => c.online()),
        () => `every client online (${clients.map((c) => `${c.name}: ${c.online() ? 'online' : 'offline'}`).join(', ')})`,
      );
      say(`# online: ${clients.map((c) => `${c.name} opens=${c.opens} edits=${c.edits} cut-off=${c.cutOff}`).join(', ')}`);
      say('online');
    } else if (command === 'done') {
      for (const c of clients) c.editor = null;
      announceSends = false;
      await converge(clients, 'after the edits stopped');
      const late = new Client(room, 'late');
      await late.start();
      await waitFor(() => late.online() && late.quiet(), 'the late joiner to sync');
      await sleep(100);
      const all = [...clients, late];
      const problems = [];
      const resyncs = all.reduce((n, c) => n + c.resyncs, 0);
      if (resyncs > 0) {
        problems.push(`${resyncs} resync(s): weft restarted behind a clock a client had seen (an acked or broadcast write was lost)`);
      }
      if (!allEqual(all.map((c) => [c.name, c.doc]))) {
        problems.push(`the late joiner differs\n${viewDiff(all.map((c) => [c.name, c.doc]))}`);
      }
      const own = clients.flatMap((c) => c.own);
      const missing = own.filter((k) => !late.doc[k]);
      if (missing.length) problems.push(`created keys missing for the late joiner: ${missing.join(', ')}`);
      const cursors = clients.map((c) => c.adapter.lastTimestamp);
      if (late.adapter.lastTimestamp < Math.max(...cursors)) {
        problems.push(
          `the late joiner's clock ${late.adapter.lastTimestamp} is behind a client's cursor (${cursors.join(', ')})`,
        );
      }
      if (problems.length) throw new Error(problems.join('\n'));
      say(
        `converged: ${Object.keys(late.doc).length} keys (${own.length} created during the crashes), ` +
          `clock ${late.adapter.lastTimestamp}, edits ${clients.map((c) => `${c.name}:${c.edits}`).join(' ')}, ` +
          `connections ${clients.map((c) => `${c.name}:${c.opens}`).join(' ')}, ` +
          `unacked patches cut off ${clients.map((c) => `${c.name}:${c.cutOff}`).join(' ')}, ` +
          `pulls deferred ${clients.map((c) => `${c.name}:${c.deferredPulls}`).join(' ')}, ` +
          `delivered offline buffers emptied ${clients.map((c) => `${c.name}:${c.deliveredBuffers}`).join(' ')}, ` +
          `0 resyncs, doc ${canon(late.doc).length} bytes`,
      );
      for (const c of all) c.close();
      return;
    } else if (command) {
      throw new Error(`unknown command ${command}`);
    }
  }
  throw new Error('stdin closed before `done`');
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`crash-converge: ${e.stack ?? e}\n`);
    process.exit(1);
  },
);
