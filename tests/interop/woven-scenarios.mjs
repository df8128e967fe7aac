#!/usr/bin/env node
// Drives the REAL client transport (`WebsocketAdapter` from @woven-ecs/canvas-store 2.0.1)
// against a server and checks that every client converges.
//
//   node woven-scenarios.mjs --url ws://127.0.0.1:PORT --scenario NAME
//                            [--token T] [--readonly-token T] [--timeout-ms N]
//
// Each client is driven the way CanvasStore.sync() drives it: on every tick (16 ms) it
// pull()s, applies what it pulled to its own view, makes its local edits on top, then
// push()es the local edits together with the pulled mutations. The client's view is
// what an app's ECS world would hold: its own edits plus everything it pulled, merged
// with the server's rules (see applyPatchToView in lib/common.mjs).

import WebSocket from 'ws';
import { encodeBufferDelta, isBufferDelta, WebsocketAdapter } from '@woven-ecs/canvas-store';
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

// Node 20 has no global WebSocket; the adapter uses `new WebSocket(url)` and
// `WebSocket.OPEN`, which the `ws` package provides (with addEventListener).
globalThis.WebSocket = WebSocket;

const ORIGIN_ECS = 1; // Origin.ECS in @woven-ecs/canvas-store
const TICK_MS = 16;

const USAGE = `usage: node woven-scenarios.mjs --url ws://127.0.0.1:PORT --scenario NAME
         [--token T] [--readonly-token T] [--timeout-ms N]
scenarios: converge-concurrent delete-recreate offline-reconnect late-joiner presence
           buffer-strokes token-refresh delete-race
           all = every scenario except token-refresh and delete-race
           (delete-race shows a client-side race; it fails against the reference server)
--token           token every client sends (token-refresh: the readwrite token, default rw-alice)
--readonly-token  token-refresh only: the readonly token (default ro-bob)
--timeout-ms      deadline for each convergence wait (default 8000)
`;

const args = parseArgs(
  process.argv.slice(2),
  {
    '--url': 'string',
    '--scenario': 'string',
    '--token': 'string',
    '--readonly-token': 'string',
    '--timeout-ms': 'int',
  },
  USAGE,
);
if (!args.url || !args.scenario) {
  process.stderr.write(USAGE);
  process.exit(2);
}
assertLocalUrl(args.url, '--url');
const TIMEOUT_MS = args.timeoutMs ?? 8000;

// One shared frame clock: every client ticks in the same turn, so their sends leave
// together and really collide at the server (with one timer per client they rarely do
// on loopback, where a round trip is well under a millisecond).
const ticker = new Set();
setInterval(() => {
  for (const c of ticker) c.tick();
}, TICK_MS).unref();

// ---------------------------------------------------------------------------
// A client: one WebsocketAdapter plus the view an app would hold.
// ---------------------------------------------------------------------------

class WovenClient {
  constructor(room, name, { token } = {}) {
    this.room = room;
    this.name = name;
    this.clientId = randomId(name);
    this.token = token;
    this.doc = {}; // document view: own edits + pulled document patches
    this.eph = {}; // remote ephemeral view (pulled ephemeral patches)
    this.queued = []; // mutations made outside a tick, applied at the next tick
    this.inTick = null; // during the editor: this tick's local mutations
    this.editor = null; // (client) => void, called inside a tick when a push will flush at once
    this.synced = 0;
    this.received = []; // every pulled mutation, for checks on what arrived
    this.stats = { edits: 0, deltas: 0, stripped: 0, lostDeletes: new Set() };
    this.adapter = new WebsocketAdapter({
      url: args.url,
      clientId: this.clientId,
      documentId: room,
      token,
      usePersistence: false,
      components: [],
      singletons: [],
      onSynced: () => {
        this.synced++;
      },
      onVersionMismatch: (v) => {
        this.versionMismatch = v;
      },
    });
  }

  async start() {
    // Count broadcast fields the adapter strips because an in-flight patch of ours
    // overwrites them: evidence that the concurrent scenarios really collide.
    const strip = this.adapter.stripInFlightFields.bind(this.adapter);
    this.adapter.stripInFlightFields = (patches) => {
      const out = strip(patches);
      if (out !== patches) this.stats.stripped += countFields(patches) - countFields(out);
      return out;
    };
    await this.adapter.init();
    ticker.add(this);
  }

  /** One app frame, in CanvasStore.sync() order: pull, apply remote, local edits, push all. */
  tick() {
    this.noteLostDeletes(this.adapter.pendingDocumentPatches);
    const pulled = this.adapter.pull();
    for (const m of pulled) {
      this.received.push(m);
      if (m.syncBehavior === 'document') applyPatchToView(this.doc, m.patch);
      else if (m.syncBehavior === 'ephemeral') applyPatchToView(this.eph, m.patch);
    }
    // The client only strips fields of incoming broadcasts that are IN FLIGHT; an edit
    // that sits in its send buffer (throttled) is not protected, so a broadcast pulled
    // meanwhile would overwrite it locally while the server ends up with the edit (a
    // client-side race, not a server one). So random editors only edit when this tick's
    // push is going to flush immediately.
    // Edits queued outside a tick wait for such a tick as well; they are applied first,
    // so the editor sees them (as an app's world would).
    let local = [];
    if (this.flushReady()) {
      local = this.queued;
      this.queued = [];
      for (const m of local) {
        if (m.syncBehavior === 'document') applyPatchToView(this.doc, m.patch);
      }
      if (this.editor) {
        this.inTick = local;
        try {
          this.editor(this);
        } finally {
          this.inTick = null;
        }
      }
    }
    this.adapter.push([...local, ...pulled]);
  }

  /**
   * Diagnostic for a CLIENT-side issue: pull() merges everything received since the
   * last pull with merge(), and merge() turns [deletion, later partial update] of one
   * key into just the partial update, so the deletion is lost and the key stays live.
   * The reference server relays partial patches to tombstoned keys (it drops them from
   * its state), so this happens whenever someone edits a key while another client
   * deletes it. Record such batches so a failure can name the cause.
   */
  noteLostDeletes(pending) {
    if (pending.length < 2) return;
    const deletedAt = new Map();
    pending.forEach((p, i) => {
      for (const [k, v] of Object.entries(p)) {
        if (v._exists === false) deletedAt.set(k, i);
        else if (v._exists !== true && deletedAt.has(k)) {
          this.stats.lostDeletes.add(k);
          deletedAt.delete(k);
        } else if (v._exists === true) deletedAt.delete(k);
      }
    });
  }

  flushReady() {
    const a = this.adapter;
    if (!a.isOnline) return true; // offline edits go to the offline buffer
    return performance.now() - a.lastSendTime >= a.sendInterval;
  }

  edit(patch) {
    this.stats.edits++;
    const m = { patch, origin: ORIGIN_ECS, syncBehavior: 'document' };
    if (this.inTick) {
      applyPatchToView(this.doc, patch);
      this.inTick.push(m);
    } else {
      this.queued.push(m);
    }
  }

  ephemeral(patch) {
    const m = { patch, origin: ORIGIN_ECS, syncBehavior: 'ephemeral' };
    (this.inTick ?? this.queued).push(m);
  }

  /** Nothing left to send, nothing unacknowledged, nothing received but unpulled. */
  quiet() {
    const a = this.adapter;
    return (
      this.queued.length === 0 &&
      a.inFlight.size === 0 &&
      a.documentSendBuffer.length === 0 &&
      a.ephemeralSendBuffer.length === 0 &&
      Object.keys(a.offlineBuffer).length === 0 &&
      a.pendingDocumentPatches.length === 0 &&
      a.pendingEphemeralPatches.length === 0
    );
  }

  close() {
    ticker.delete(this);
    this.editor = null;
    this.adapter.close();
  }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

function countFields(patches) {
  let n = 0;
  for (const p of patches) for (const v of Object.values(p)) n += Object.keys(v).length;
  return n;
}

async function waitFor(cond, what, timeoutMs = TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (cond()) return;
    if (Date.now() > deadline) {
      const detail = typeof what === 'function' ? what() : what;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${detail}`);
    }
    await sleep(20);
  }
}

function viewDiff(views) {
  // views: [[label, view], ...] -> human-readable per-key differences
  const keys = new Set();
  for (const [, v] of views) for (const k of Object.keys(v)) keys.add(k);
  const lines = [];
  for (const k of [...keys].sort()) {
    const vals = views.map(([, v]) => v[k]);
    if (vals.every((x) => jsonEqual(x, vals[0]))) continue;
    lines.push(`  key ${k}:`);
    for (let i = 0; i < views.length; i++) {
      lines.push(`    ${views[i][0].padEnd(12)} ${vals[i] === undefined ? '(absent)' : short(vals[i], 300)}`);
    }
    if (lines.length > 60) {
      lines.push('  ...');
      break;
    }
  }
  return lines.join('\n');
}

function allEqual(views) {
  return views.every(([, v]) => jsonEqual(v, views[0][1]));
}

/** Wait until every client is quiet and all views are equal, twice in a row 100 ms apart. */
async function converge(clients, label, pick = (c) => c.doc) {
  const deadline = Date.now() + TIMEOUT_MS;
  let stableSince = 0;
  for (;;) {
    const views = clients.map((c) => [c.name, pick(c)]);
    const ok = clients.every((c) => c.quiet()) && allEqual(views);
    if (ok) {
      if (!stableSince) stableSince = Date.now();
      else if (Date.now() - stableSince >= 100) return canon(views[0][1]);
    } else {
      stableSince = 0;
    }
    if (Date.now() > deadline) {
      const notQuiet = clients.filter((c) => !c.quiet()).map((c) => c.name);
      const lost = clients
        .filter((c) => c.stats.lostDeletes.size)
        .map((c) => `${c.name}: ${[...c.stats.lostDeletes].join(', ')}`);
      throw new Error(
        `${label}: no convergence after ${TIMEOUT_MS} ms` +
          (notQuiet.length ? ` (still busy: ${notQuiet.join(', ')})` : '') +
          `\n${viewDiff(views) || '  (views equal)'}` +
          (lost.length
            ? `\n  client-side cause: a pull batch held a deletion followed by a relayed partial ` +
              `update of the same key, which the client's merge() collapses into a partial ` +
              `update (deletion lost) — ${lost.join('; ')}`
            : ''),
      );
    }
    await sleep(25);
  }
}

/**
 * Connect clients: the first one alone (the reference server creates one room per
 * connect when several connects race to a room that is not loaded yet), the rest
 * together; then wait until each has synced and knows the client count.
 */
async function connectAll(clients, expectedCount = clients.length) {
  const [first, ...rest] = clients;
  if (first) {
    await first.start();
    await waitFor(() => first.synced > 0, `${first.name} to sync`);
  }
  await Promise.all(rest.map((c) => c.start()));
  await waitFor(
    () => clients.every((c) => c.synced > 0 && c.adapter.connectedUsers >= expectedCount),
    () =>
      `clients to sync and see ${expectedCount} connected (` +
      clients.map((c) => `${c.name}: synced=${c.synced} count=${c.adapter.connectedUsers}`).join(', ') +
      ')',
  );
}

function expectEqualViews(label, views) {
  if (!allEqual(views)) throw new Error(`${label}: views differ\n${viewDiff(views)}`);
}

function expectAbsent(label, clients, keys, pick = (c) => c.doc) {
  for (const c of clients) {
    for (const k of keys) {
      if (pick(c)[k] !== undefined) {
        throw new Error(`${label}: ${c.name} still has ${k} = ${short(pick(c)[k])}`);
      }
    }
  }
}

function expectPresent(label, clients, keys, pick = (c) => c.doc) {
  for (const c of clients) {
    for (const k of keys) {
      if (pick(c)[k] === undefined) throw new Error(`${label}: ${c.name} lacks ${k}`);
    }
  }
}

const FIELDS = ['x', 'y', 'color', 'label'];

/** Random partial edit of 1-2 live keys (from `keys`), 1-3 fields each. */
function randomFieldEdit(c, r, keys) {
  const live = keys.filter((k) => c.doc[k]);
  if (live.length === 0) return;
  const patch = {};
  const nKeys = r.range(1, 2);
  for (let i = 0; i < nKeys; i++) {
    const k = r.pick(live);
    const v = (patch[k] ??= {});
    const nFields = r.range(1, 3);
    for (let j = 0; j < nFields; j++) {
      const f = r.pick(FIELDS);
      v[f] = f === 'x' || f === 'y' ? r.int(1000) : `${c.name}#${c.stats.edits}`;
    }
  }
  c.edit(patch);
}

function freshRecord(c, extra = {}) {
  return { _exists: true, x: 0, y: 0, color: `${c.name}-color`, label: `${c.name}-created`, ...extra };
}

const runFor = (ms) => sleep(ms);

function withClients(fn) {
  return async (...a) => {
    const made = [];
    const make = (room, name, opts) => {
      const c = new WovenClient(room, name, opts);
      made.push(c);
      return c;
    };
    try {
      return await fn(make, ...a);
    } finally {
      for (const c of made) {
        try {
          c.close();
        } catch {
          // ignore
        }
      }
    }
  };
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

const scenarios = {};

scenarios['converge-concurrent'] = withClients(async (make) => {
  const room = randomId('converge');
  const r = rng(Date.now());
  const cs = ['A', 'B', 'C'].map((n) => make(room, n, { token: args.token }));
  await connectAll(cs);
  const keys = ['e0/shape', 'e1/shape', 'e2/shape', 'e3/shape'];
  cs[0].edit(Object.fromEntries(keys.map((k) => [k, freshRecord(cs[0])])));
  await converge(cs, 'after create');
  // Mostly the same two keys, so the clients' in-flight patches overlap a lot.
  for (const c of cs) c.editor = (cl) => randomFieldEdit(cl, r, r.chance(0.7) ? keys.slice(0, 2) : keys);
  await runFor(2000);
  for (const c of cs) c.editor = null;
  await converge(cs, 'after concurrent edits');
  const late = make(room, 'late', { token: args.token });
  await joinLate(late);
  expectEqualViews('late joiner', [...cs, late].map((c) => [c.name, c.doc]));
  expectPresent('late joiner', [late], keys);
  const stripped = cs.reduce((n, c) => n + c.stats.stripped, 0);
  return `${cs.map((c) => `${c.name}:${c.stats.edits}`).join(' ')} edits on ${keys.length} keys, ${stripped} colliding broadcast fields stripped by clients`;
});

async function joinLate(late) {
  await late.start();
  await waitFor(() => late.synced > 0 && late.quiet(), `${late.name} to sync`);
  await sleep(50);
}

/**
 * delete-recreate: owners cycle delete / re-create of their own keys while everybody
 * edits shared keys; A deletes two shared keys while B and C keep editing the others.
 *
 * Two client-side races are kept out on purpose (see README): nobody edits a key that
 * someone else re-creates (an incoming deletion is never stripped by the in-flight
 * mask, so a concurrent partial edit is lost locally), and the shared keys A deletes
 * stop being edited ~100 ms before the deletion (a partial relayed after a deletion in
 * the same pull batch makes the client's merge() drop the deletion). `delete-race`
 * keeps editing right through the deletions to show the second race; it is not in `all`.
 */
function deleteRecreate(race) {
  return withClients(async (make) => {
    const room = randomId(race ? 'delrace' : 'delrec');
    const r = rng(Date.now() + 1);
    const [A, B, C] = ['A', 'B', 'C'].map((n) => make(room, n, { token: args.token }));
    const cs = [A, B, C];
    await connectAll(cs);
    const shared = ['k0/shape', 'k1/shape', 'k2/shape', 'k3/shape'];
    const ownedA = ['r0/shape', 'r1/shape', 'r2/shape'];
    const ownedB = ['b0/shape', 'b1/shape'];
    A.edit(Object.fromEntries([...shared, ...ownedA].map((k) => [k, freshRecord(A)])));
    B.edit(Object.fromEntries(ownedB.map((k) => [k, freshRecord(B)])));
    await converge(cs, 'after create');

    let editable = shared; // shared keys the editors may touch
    const cycle = (c, owned) => {
      const k = r.pick(owned);
      if (c.doc[k]) c.edit({ [k]: { _exists: false } });
      else c.edit({ [k]: freshRecord(c, { label: `${c.name}-recreated-${c.stats.edits}` }) });
    };
    A.editor = (c) => (r.chance(0.5) ? cycle(c, ownedA) : randomFieldEdit(c, r, editable));
    B.editor = (c) => (r.chance(0.3) ? cycle(c, ownedB) : randomFieldEdit(c, r, editable));
    C.editor = (c) => r.chance(0.8) && randomFieldEdit(c, r, editable);
    await runFor(600);
    if (!race) editable = shared.slice(2);
    await runFor(100);
    A.edit({ 'k0/shape': { _exists: false } });
    await runFor(500);
    A.edit({ 'k1/shape': { _exists: false } });
    await runFor(800);
    for (const c of cs) c.editor = null;
    // Final owner actions so both outcomes are checked: r0 deleted, r1 live, b0 deleted.
    if (A.doc['r0/shape']) A.edit({ 'r0/shape': { _exists: false } });
    if (!A.doc['r1/shape']) A.edit({ 'r1/shape': freshRecord(A, { label: 'final' }) });
    if (B.doc['b0/shape']) B.edit({ 'b0/shape': { _exists: false } });
    await converge(cs, 'after delete/re-create');
    const gone = ['k0/shape', 'k1/shape', 'r0/shape', 'b0/shape'];
    expectAbsent('deleted keys', cs, gone);
    expectPresent('live keys', cs, ['k2/shape', 'k3/shape', 'r1/shape']);
    const late = make(room, 'late', { token: args.token });
    await joinLate(late);
    expectEqualViews('late joiner', [...cs, late].map((c) => [c.name, c.doc]));
    expectAbsent('late joiner', [late], gone);
    const tombs = gone.filter((k) =>
      late.received.some((m) => m.syncBehavior === 'document' && m.patch[k]?._exists === false),
    );
    return `${cs.map((c) => `${c.name}:${c.stats.edits}`).join(' ')} edits; late joiner got ${tombs.length}/${gone.length} tombstones`;
  });
}
scenarios['delete-recreate'] = deleteRecreate(false);
scenarios['delete-race'] = deleteRecreate(true);

scenarios['offline-reconnect'] = withClients(async (make) => {
  const room = randomId('offline');
  const r = rng(Date.now() + 2);
  const [A, B, C] = ['A', 'B', 'C'].map((n) => make(room, n, { token: args.token }));
  const cs = [A, B, C];
  await connectAll(cs);
  const keys = ['k0/shape', 'k1/shape', 'k2/shape', 'k3/shape'];
  A.edit(Object.fromEntries(keys.map((k) => [k, freshRecord(A)])));
  await converge(cs, 'after create');

  const oldSocket = A.adapter.ws;
  A.adapter.disconnect();
  // Reconnecting before the old socket's close event would let that event clear the
  // new socket (adapter detail), so wait for it like a real offline period would.
  await waitFor(() => oldSocket.readyState === WebSocket.CLOSED, 'A socket to close');
  await waitFor(() => B.adapter.connectedUsers === 2 && C.adapter.connectedUsers === 2, 'count 2');

  let offlineEdits = 0;
  A.editor = (c) => {
    if (!r.chance(0.5)) return;
    offlineEdits++;
    randomFieldEdit(c, r, keys.slice(0, 3));
  };
  // B and C edit the keys A edits offline, but not k3, which A deletes offline (a
  // partial relayed after that deletion can make the CLIENT lose it; see delete-race).
  B.editor = (c) => r.chance(0.6) && randomFieldEdit(c, r, keys.slice(0, 3));
  C.editor = (c) => r.chance(0.6) && randomFieldEdit(c, r, keys.slice(0, 3));
  await runFor(600);
  // Offline structural changes too: a create and a delete.
  A.edit({ 'a-offline/shape': freshRecord(A, { label: 'made offline' }) });
  A.edit({ 'k3/shape': { _exists: false } });
  await runFor(600);
  if (Object.keys(A.adapter.offlineBuffer).length === 0) throw new Error('A has no offline buffer');
  await A.adapter.reconnect();
  await runFor(500);
  for (const c of cs) c.editor = null;
  await converge(cs, 'after reconnect');
  expectAbsent('offline delete', cs, ['k3/shape']);
  expectPresent('offline create', cs, ['a-offline/shape']);
  const late = make(room, 'late', { token: args.token });
  await joinLate(late);
  expectEqualViews('late joiner', [...cs, late].map((c) => [c.name, c.doc]));
  return `${offlineEdits} offline edits by A, ${B.stats.edits + C.stats.edits} by B+C`;
});

scenarios['late-joiner'] = withClients(async (make) => {
  const room = randomId('late');
  const r = rng(Date.now() + 3);
  const [A, B] = ['A', 'B'].map((n) => make(room, n, { token: args.token }));
  const cs = [A, B];
  await connectAll(cs);
  const keys = Array.from({ length: 20 }, (_, i) => `n${i}/shape`);
  A.edit(Object.fromEntries(keys.slice(0, 10).map((k) => [k, freshRecord(A)])));
  B.edit(Object.fromEntries(keys.slice(10).map((k) => [k, freshRecord(B)])));
  await converge(cs, 'after create');
  A.editor = (c) => randomFieldEdit(c, r, keys);
  B.editor = (c) => randomFieldEdit(c, r, keys);
  await runFor(1000);
  A.editor = null;
  B.editor = null;
  // Deletions, one re-created, one created-and-deleted.
  A.edit({ 'n0/shape': { _exists: false }, 'n1/shape': { _exists: false }, 'n2/shape': { _exists: false } });
  B.edit({ 'n15/shape': { _exists: false }, 'n16/shape': { _exists: false } });
  await converge(cs, 'after deletes');
  A.edit({ 'n1/shape': freshRecord(A, { label: 'back' }) });
  B.edit({ 'tmp/shape': freshRecord(B) });
  await converge(cs, 'after re-create');
  B.edit({ 'tmp/shape': { _exists: false } });
  await converge(cs, 'before late join');
  const gone = ['n0/shape', 'n2/shape', 'n15/shape', 'n16/shape', 'tmp/shape'];
  const late = make(room, 'late', { token: args.token });
  await joinLate(late);
  expectEqualViews('late joiner', [...cs, late].map((c) => [c.name, c.doc]));
  expectAbsent('late joiner', [late], gone);
  expectPresent('late joiner', [late], ['n1/shape', 'n3/shape', 'n19/shape']);
  if (late.doc['n1/shape'].label !== 'back') throw new Error(`re-created n1 has ${short(late.doc['n1/shape'])}`);
  // The deletions reach the late joiner as tombstones (so a cached copy would drop them).
  const tombs = new Set();
  for (const m of late.received) {
    if (m.syncBehavior !== 'document') continue;
    for (const [k, v] of Object.entries(m.patch)) if (v._exists === false) tombs.add(k);
  }
  const missing = gone.filter((k) => !tombs.has(k));
  if (missing.length) throw new Error(`late joiner did not receive tombstones for ${missing.join(', ')}`);
  return `${Object.keys(late.doc).length} live keys, ${tombs.size} tombstones received`;
});

scenarios.presence = withClients(async (make) => {
  const room = randomId('presence');
  const r = rng(Date.now() + 4);
  const [A, B, C] = ['A', 'B', 'C'].map((n) => make(room, n, { token: args.token }));
  const cs = [A, B, C];
  await connectAll(cs);
  const cursor = (c) => `${c.clientId}/cursor`;
  const sel = (c) => `${c.clientId}/selection`;
  const last = {};
  const mover = (c) => {
    const k = cursor(c);
    const v = { x: r.int(2000), y: r.int(2000) };
    if (!last[k]) c.ephemeral({ [k]: { _exists: true, name: c.name, ...v } });
    else c.ephemeral({ [k]: v });
    last[k] = { _exists: true, name: c.name, ...last[k], ...v };
  };
  A.editor = mover;
  B.editor = mover;
  A.ephemeral({ [sel(A)]: { _exists: true, ids: ['e1', 'e2'] } });
  // A document edit alongside, so mixed frames flow too.
  C.edit({ 'doc/shape': freshRecord(C) });
  await runFor(600);
  A.editor = null;
  B.editor = null;
  const wantC = { [cursor(A)]: last[cursor(A)], [cursor(B)]: last[cursor(B)], [sel(A)]: { _exists: true, ids: ['e1', 'e2'] } };
  await waitFor(
    () => cs.every((c) => c.quiet()) && jsonEqual(C.eph, wantC),
    () => `C to see the cursors\n${viewDiff([['want', wantC], ['C', C.eph]])}`,
  );
  const wantA = { [cursor(B)]: last[cursor(B)] };
  await waitFor(() => jsonEqual(A.eph, wantA), () => `A to see B's cursor\n${viewDiff([['want', wantA], ['A', A.eph]])}`);
  // A late joiner gets the others' ephemeral state on join.
  const D = make(room, 'D', { token: args.token });
  await joinLate(D);
  await waitFor(() => jsonEqual(D.eph, wantC), () => `D to see the cursors\n${viewDiff([['want', wantC], ['D', D.eph]])}`);
  if (!D.doc['doc/shape']) throw new Error('D lacks the document key');
  // A leaves: the others receive deletions for all of A's ephemeral keys.
  A.close();
  const wantAfter = { [cursor(B)]: last[cursor(B)] };
  for (const c of [C, D]) {
    await waitFor(
      () => jsonEqual(c.eph, wantAfter),
      () => `${c.name} to drop A's presence\n${viewDiff([['want', wantAfter], [c.name, c.eph]])}`,
    );
  }
  await waitFor(() => jsonEqual(B.eph, {}), () => `B to drop A's presence: ${short(B.eph)}`);
  const gotDeletion = C.received.some(
    (m) => m.syncBehavior === 'ephemeral' && m.patch[cursor(A)] && m.patch[cursor(A)]._exists === false,
  );
  if (!gotDeletion) throw new Error('C never received an _exists:false for A\'s cursor');
  // B removes its own cursor explicitly.
  B.ephemeral({ [cursor(B)]: { _exists: false } });
  for (const c of [C, D]) {
    await waitFor(() => jsonEqual(c.eph, {}), () => `${c.name} to drop B's cursor: ${short(c.eph)}`);
  }
  await waitFor(() => C.adapter.connectedUsers === 3 && D.adapter.connectedUsers === 3, 'client count 3');
  return 'presence delivered, late joiner saw it, leave removed it';
});

scenarios['buffer-strokes'] = withClients(async (make) => {
  const room = randomId('strokes');
  const r = rng(Date.now() + 5);
  const cs = ['A', 'B', 'C'].map((n) => make(room, n, { token: args.token }));
  await connectAll(cs);
  const strokes = new Map(); // key -> own full array (the app's buffer)
  const keysOf = (c) => [0, 1].map((i) => `${c.clientId}-s${i}/stroke`);
  const drawer = (c) => {
    const k = r.pick(keysOf(c));
    if (!strokes.has(k)) {
      strokes.set(k, []);
      c.edit({ [k]: { _exists: true, color: c.name, width: 2, pts: [] } });
      return;
    }
    const prev = strokes.get(k);
    const next = prev.slice();
    const n = r.range(1, 4);
    for (let i = 0; i < n; i++) next.push(Math.round(r.next() * 100000) / 100, Math.round(r.next() * 100000) / 100);
    if (next.length > 10 && r.chance(0.25)) next[r.int(next.length - 4)] = -1 * r.int(500); // smoothing edit
    const value = encodeBufferDelta(prev, next);
    strokes.set(k, next);
    if (value === null) return;
    if (isBufferDelta(value)) c.stats.deltas++;
    c.edit({ [k]: { pts: value } });
  };
  for (const c of cs) c.editor = drawer;
  await runFor(1500);
  for (const c of cs) c.editor = null;
  await converge(cs, 'after strokes');
  for (const c of cs) {
    for (const k of keysOf(c)) {
      if (!strokes.has(k)) continue;
      for (const o of cs) {
        if (!jsonEqual(o.doc[k]?.pts, strokes.get(k))) {
          throw new Error(`${o.name} has ${k}.pts = ${short(o.doc[k]?.pts)}; drawer has ${short(strokes.get(k))}`);
        }
      }
    }
  }
  const deltas = cs.reduce((n, c) => n + c.stats.deltas, 0);
  if (deltas === 0) throw new Error('no buffer deltas were sent');
  const late = make(room, 'late', { token: args.token });
  await joinLate(late);
  expectEqualViews('late joiner', [...cs, late].map((c) => [c.name, c.doc]));
  for (const m of late.received) {
    for (const [k, v] of Object.entries(m.patch)) {
      for (const [f, fv] of Object.entries(v)) {
        if (isBufferDelta(fv)) throw new Error(`late joiner received a buffer delta for ${k}.${f}: ${short(fv)}`);
      }
    }
  }
  const longest = Math.max(...[...strokes.values()].map((a) => a.length));
  return `${strokes.size} strokes, ${deltas} deltas sent, longest ${longest} numbers`;
});

scenarios['token-refresh'] = withClients(async (make) => {
  const room = randomId('refresh');
  const rwToken = args.token ?? 'rw-alice';
  const roToken = args.readonlyToken ?? 'ro-bob';
  const W = make(room, 'W', { token: rwToken });
  const R = make(room, 'R', { token: roToken });
  await connectAll([W, R]);
  R.edit({ 'ro/shape': freshRecord(R, { label: 'written while readonly' }) });
  await waitFor(() => R.quiet(), 'readonly write to be acked');
  W.edit({ 'w/shape': freshRecord(W) });
  await waitFor(() => W.quiet() && R.doc['w/shape'], 'R to receive W\'s write');
  if (W.doc['ro/shape']) throw new Error('readonly write reached W');
  R.adapter.setToken(rwToken);
  // auth-refresh has no reply; the reference applies it asynchronously.
  await sleep(200);
  R.edit({ 'rw/shape': freshRecord(R, { label: 'written after refresh' }) });
  await waitFor(() => R.quiet() && W.doc['rw/shape'], 'W to receive R\'s write after the refresh');
  const L = make(room, 'L', { token: rwToken });
  await joinLate(L);
  expectPresent('late joiner', [L], ['rw/shape', 'w/shape']);
  expectAbsent('late joiner', [L, W], ['ro/shape']);
  expectEqualViews('late joiner', [['W', W.doc], ['L', L.doc]]);
  return 'readonly write dropped, write after auth-refresh applied';
});

// ---------------------------------------------------------------------------

const ALL = ['converge-concurrent', 'delete-recreate', 'offline-reconnect', 'late-joiner', 'presence', 'buffer-strokes'];

async function runOne(name) {
  const t0 = Date.now();
  try {
    const info = await scenarios[name]();
    process.stdout.write(`scenario ${name}: ok (${Date.now() - t0} ms${info ? `; ${info}` : ''})\n`);
    return true;
  } catch (err) {
    process.stdout.write(`scenario ${name}: FAILED after ${Date.now() - t0} ms\n${err?.stack ?? err}\n`);
    return false;
  }
}

async function main() {
  const name = args.scenario;
  if (name === 'all') {
    let failed = 0;
    for (const s of ALL) if (!(await runOne(s))) failed++;
    if (failed) {
      process.stdout.write(`scenario all: ${failed} of ${ALL.length} failed\n`);
      return 1;
    }
    process.stdout.write('scenario all: ok\n');
    return 0;
  }
  if (!scenarios[name]) {
    process.stderr.write(`unknown scenario ${name}\n${USAGE}`);
    return 2;
  }
  return (await runOne(name)) ? 0 : 1;
}

process.on('unhandledRejection', (err) => {
  process.stdout.write(`unhandled rejection: ${err?.stack ?? err}\n`);
  process.exit(1);
});

main().then((code) => process.exit(code));
