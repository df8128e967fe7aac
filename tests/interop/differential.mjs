#!/usr/bin/env node
// Differential tester: sends IDENTICAL frame sequences over raw `ws` sockets to two
// servers and requires the same reply frames per socket (compared as parsed JSON) and
// the same final document.
//
//   node differential.mjs --a ws://127.0.0.1:PA --b ws://127.0.0.1:PB
//        [--seed N[,N...]] [--steps N] [--script NAME|all|random] [--tokens FILE]
//        [--settle-ms N] [--step-timeout-ms N] [--verbose]
//
// See README.md for how a step is delimited and what the scripts cover.

import { readFileSync } from 'node:fs';
import WebSocket from 'ws';
import {
  assertLocalUrl,
  jsonEqual,
  parseArgs,
  randomId,
  rng,
  short,
  sleep,
} from './lib/common.mjs';

const USAGE = `usage: node differential.mjs --a ws://127.0.0.1:PA --b ws://127.0.0.1:PB
         [--seed N[,N...]] [--steps N] [--script NAME|all|random] [--tokens FILE]
         [--skip NAME[,NAME...]] [--settle-ms N] [--step-timeout-ms N] [--verbose] [--dump] [--list]
--script   a scripted case, "random" (seeded random steps) or "all" (default: every
           scripted case, then one random run per seed)
--seed     seed(s) for the random run (default 1)
--steps    random steps per seed (default 200)
--skip     scripted cases to leave out (where a server differs from the other on purpose)
--tokens   the tokens file BOTH servers were started with; enables the auth scripts
           and makes every socket send a readwrite token from it
--settle-ms        quiet period after a step's expected frames (default 15)
--step-timeout-ms  how long to wait for a step's expected frames (default 2000)
--verbose  print each step as it runs; --dump  print every socket's frames (server A)
`;

const args = parseArgs(
  process.argv.slice(2),
  {
    '--a': 'string',
    '--b': 'string',
    '--seed': 'string',
    '--steps': 'int',
    '--script': 'string',
    '--skip': 'string',
    '--tokens': 'string',
    '--settle-ms': 'int',
    '--step-timeout-ms': 'int',
    '--verbose': 'bool',
    '--dump': 'bool',
    '--list': 'bool',
  },
  USAGE,
);

const SETTLE_MS = args.settleMs ?? 15;
const STEP_TIMEOUT_MS = args.stepTimeoutMs ?? 2000;
const SEEDS = (args.seed ?? '1').split(',').map((s) => {
  if (!/^\d+$/.test(s)) {
    process.stderr.write(`bad --seed ${s}\n`);
    process.exit(2);
  }
  return Number(s);
});
const STEPS = args.steps ?? 200;
const SIDES = ['a', 'b'];

// ---------------------------------------------------------------------------
// Tokens (only needed when the servers run with --tokens)
// ---------------------------------------------------------------------------

let TOKENS = null; // { table: Map(token -> entry), rw, rw2, ro, prefix: {token, prefix} }
function loadTokens(file) {
  const parsed = JSON.parse(readFileSync(file, 'utf8'));
  const table = new Map();
  for (const t of parsed.tokens) table.set(t.token, t);
  const all = [...table.values()];
  const anyRoom = (t) => t.rooms.includes('*');
  const rws = all.filter((t) => t.permission === 'readwrite' && anyRoom(t));
  const ro = all.find((t) => t.permission === 'readonly' && anyRoom(t));
  const prefix = all.find((t) => t.rooms.length === 1 && t.rooms[0].endsWith('*') && t.rooms[0] !== '*');
  if (rws.length === 0) throw new Error(`${file}: needs a readwrite token with rooms ["*"]`);
  return {
    table,
    rw: rws[0].token,
    rw2: (rws[1] ?? rws[0]).token,
    ro: ro?.token,
    prefix: prefix ? { token: prefix.token, prefix: prefix.rooms[0].slice(0, -1) } : null,
  };
}

/** The permission the servers should grant, or null for a rejection. */
function expectedPermission(roomId, token) {
  if (!TOKENS) return 'readwrite';
  const t = token ? TOKENS.table.get(token) : undefined;
  if (!t) return null;
  const ok = t.rooms.some(
    (p) => p === '*' || p === roomId || (p.endsWith('*') && roomId.startsWith(p.slice(0, -1))),
  );
  return ok ? t.permission : null;
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/** One socket on one server. */
class Conn {
  constructor(run, side, pair, url) {
    this.run = run;
    this.side = side;
    this.pair = pair;
    this.frames = []; // { step, msg }
    this.closed = false;
    this.selfClosed = false;
    this.closeCode = null;
    this.lastFrameAt = 0;
    this.waiters = new Set();
    this.ws = new WebSocket(url);
    this.opened = new Promise((resolve) => {
      this.ws.on('open', () => resolve(true));
      this.ws.on('error', (err) => {
        this.error = err.message;
        resolve(false);
      });
    });
    this.ws.on('message', (data) => {
      const text = data.toString();
      let msg;
      try {
        msg = JSON.parse(text);
      } catch {
        msg = { $unparseable: text };
      }
      this.record(msg);
      if (this.side === 'a') this.pair.observe(msg);
      // The real client disconnects itself on version-mismatch.
      if (msg && msg.type === 'version-mismatch' && !this.closed) this.close();
    });
    this.ws.on('close', (code) => {
      this.closeCode = code;
      if (!this.closed && !this.selfClosed) this.record({ $closed: true });
      this.closed = true;
      this.notify();
    });
  }

  record(msg) {
    this.frames.push({ step: this.run.step, msg });
    this.lastFrameAt = Date.now();
    this.run.lastFrameAt[this.side] = this.lastFrameAt;
    this.notify();
  }

  notify() {
    for (const w of this.waiters) w();
  }

  send(text) {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(text);
    return true;
  }

  close() {
    this.selfClosed = true;
    try {
      this.ws.close();
    } catch {
      // ignore
    }
  }
}

/** A logical client: the same clientId/token on both servers; `incarnation` counts its sockets. */
class Pair {
  constructor(run, name, { clientId, token }) {
    this.run = run;
    this.name = name;
    this.clientId = clientId ?? `${name}-${run.tag}`;
    this.token = token;
    this.incarnation = 0;
    this.conns = null; // { a: Conn, b: Conn }
    this.perm = null;
    this.msgCounter = 0;
    this.cursor = 0; // what the real client would send as lastTimestamp (from side a)
    this.sentDoc = new Set(); // messageIds of document patches (acks move the cursor)
  }

  get open() {
    return this.conns !== null && !this.conns.a.closed;
  }

  nextMessageId() {
    return `${this.clientId}-${++this.msgCounter}`;
  }

  observe(msg) {
    if (!msg || typeof msg !== 'object') return;
    if (msg.type === 'ack' && this.sentDoc.has(msg.messageId)) {
      this.cursor = msg.timestamp;
      this.sentDoc.delete(msg.messageId);
    }
    if (msg.type === 'patch' && msg.timestamp !== undefined && msg.documentPatches?.length) {
      this.cursor = Math.max(this.cursor, msg.timestamp);
    }
    for (const t of [msg.timestamp, msg.type === 'resync' ? msg.since : undefined]) {
      if (typeof t === 'number') this.run.clock = Math.max(this.run.clock, t);
    }
  }
}

const hasItems = (v) => Array.isArray(v) && v.length > 0;

class Run {
  constructor(name, urls, { room } = {}) {
    this.name = name;
    this.urls = urls;
    this.tag = randomId('x').slice(2, 8);
    this.room = room ?? randomId(`diff-${name}`);
    this.step = 0;
    this.labels = new Map(); // step -> label
    this.pairs = new Map();
    this.allConns = []; // [{ label, a, b }]
    this.lastFrameAt = { a: 0, b: 0 };
    this.clock = 0; // latest server timestamp seen on side a
    this.timeouts = [];
    this.extraMismatches = []; // close-code problems of rejected connects
    this.mismatchCount = 0;
  }

  pair(name, opts = {}) {
    let p = this.pairs.get(name);
    if (!p) {
      p = new Pair(this, name, { clientId: opts.clientId, token: opts.token ?? defaultToken() });
      this.pairs.set(name, p);
    }
    return p;
  }

  openPairs() {
    return [...this.pairs.values()].filter((p) => p.open);
  }

  beginStep(label) {
    this.step++;
    this.labels.set(this.step, label);
    if (args.verbose) process.stdout.write(`  [${this.name}] step ${this.step}: ${label}\n`);
  }

  /**
   * Wait, on each server independently, for the frames this step must produce
   * (`marker` on the acting socket, at least N frames on others), then for
   * SETTLE_MS without any frame on that server's sockets.
   */
  async waitStep({ actor, marker, others = 0, extraSettle = 0 }) {
    const starts = new Map();
    for (const p of this.pairs.values()) {
      if (!p.conns) continue;
      for (const s of SIDES) starts.set(p.conns[s], p.conns[s].frames.length);
    }
    // Only sockets in the actor's room hear about this step.
    const watchOthers = this.openPairs().filter((p) => p !== actor && p.roomId === actor?.roomId);
    await Promise.all(
      SIDES.map(async (side) => {
        const since = (c) => c.frames.slice(starts.get(c) ?? 0).map((f) => f.msg);
        const done = () => {
          if (marker && actor && !marker(since(actor.conns[side]), actor.conns[side])) return false;
          for (const p of watchOthers) {
            const c = p.conns[side];
            if (c.closed) continue;
            if (since(c).length < others) return false;
          }
          return true;
        };
        const ok = await waitUntil(done, this.allSideConns(side), STEP_TIMEOUT_MS);
        if (!ok) {
          this.timeouts.push(`step ${this.step} (${this.labels.get(this.step)}) on ${side}`);
          if (args.verbose) process.stdout.write(`  [${this.name}] step ${this.step}: timeout on ${side}\n`);
        }
        // Quiet period: no new frame on this server for SETTLE_MS.
        const settle = SETTLE_MS + extraSettle;
        const t0 = Date.now();
        for (;;) {
          const quietFor = Date.now() - Math.max(this.lastFrameAt[side], t0);
          if (quietFor >= settle) break;
          await sleep(settle - quietFor);
        }
      }),
    );
  }

  allSideConns(side) {
    return this.allConns.map((c) => c[side]);
  }

  /** Open a socket for `name` on both servers and send its first frame. */
  async connect(name, { first, token, clientId, room, expectReject = false, label } = {}) {
    const p = this.pair(name, { token, clientId });
    if (token !== undefined) p.token = token;
    if (p.open) throw new Error(`internal: ${name} is already open`);
    const roomId = room ?? this.room;
    const perm = expectedPermission(roomId, p.token);
    const rejected = expectReject || perm === null;
    p.perm = perm;
    p.roomId = roomId;
    p.incarnation++;
    const text = first === undefined ? null : JSON.stringify(first);
    this.beginStep(label ?? `${name} connects${first ? ` with ${first.type}` : ''}${rejected ? ' (rejected)' : ''}`);
    const others = rejected ? 0 : 1; // clientCount
    p.conns = {};
    for (const side of SIDES) {
      const u = new URL(this.urls[side]);
      u.searchParams.set('roomId', roomId);
      u.searchParams.set('clientId', p.clientId);
      if (p.token) u.searchParams.set('token', p.token);
      const c = new Conn(this, side, p, u.toString());
      p.conns[side] = c;
      // Like the real client: the first frame goes out the moment the socket opens.
      c.ws.on('open', () => {
        if (text !== null) c.send(text);
      });
    }
    this.allConns.push({ label: `${name}#${p.incarnation}`, a: p.conns.a, b: p.conns.b, pair: p });
    if (first?.type === 'patch' && hasItems(first.documentPatches)) p.sentDoc.add(first.messageId);
    let marker;
    if (rejected) marker = (_, c) => c.closed;
    else if (!first) marker = (msgs) => msgs.some((m) => m.type === 'clientCount');
    else if (first.type === 'reconnect' && first.protocolVersion !== 2) marker = (msgs, c) => c.closed;
    else if (first.type === 'reconnect') marker = (msgs) => msgs.some((m) => m.type === 'synced');
    else if (first.type === 'patch') marker = (msgs) => msgs.some((m) => m.type === 'ack');
    const othersN = first?.type === 'reconnect' && first.protocolVersion !== 2 ? 2 : others;
    await this.waitStep({ actor: p, marker, others: othersN });
    if (rejected) {
      for (const side of SIDES) {
        const c = p.conns[side];
        if (c.closeCode !== 1008) {
          this.extraMismatches.push(
            `step ${this.step} (${this.labels.get(this.step)}) ${name}: server ${side.toUpperCase()} ` +
              `closed the rejected connect with ${c.closeCode ?? '(still open)'}, expected 1008`,
          );
        }
      }
    }
    return p;
  }

  /** Send one frame from `name` (same text to both servers) and wait for the step to finish. */
  async send(name, frame, { label, expectClose = false, permAfter } = {}) {
    const p = this.pairs.get(name);
    if (!p || !p.open) throw new Error(`internal: ${name} is not open`);
    const text = JSON.stringify(frame);
    this.beginStep(label ?? describe(name, frame));
    const rw = p.perm === 'readwrite';
    let marker = null;
    let others = 0;
    let extraSettle = 0;
    if (frame.type === 'patch') {
      const doc = hasItems(frame.documentPatches);
      const eph = hasItems(frame.ephemeralPatches);
      if (doc || eph) {
        marker = (msgs) => msgs.some((m) => m.type === 'ack' && m.messageId === frame.messageId);
        others = rw ? 1 : 0;
      }
      if (doc) p.sentDoc.add(frame.messageId);
    } else if (frame.type === 'reconnect') {
      if (frame.protocolVersion !== 2) {
        marker = (msgs, c) => c.closed; // version-mismatch, then the client closes
        others = 1;
      } else {
        marker = (msgs) => msgs.some((m) => m.type === 'synced');
        others = rw && (hasItems(frame.documentPatches) || hasItems(frame.ephemeralPatches)) ? 1 : 0;
      }
    } else if (frame.type === 'auth-refresh') {
      // No reply on success; the reference authorizes asynchronously, so give it a moment.
      if (expectClose) {
        marker = (msgs, c) => c.closed;
        others = 1; // clientCount
      } else {
        extraSettle = 40;
      }
    }
    for (const side of SIDES) p.conns[side].send(text);
    await this.waitStep({ actor: p, marker, others, extraSettle });
    if (permAfter !== undefined) p.perm = permAfter;
    return p;
  }

  async authRefresh(name, token) {
    const p = this.pairs.get(name);
    const perm = expectedPermission(p.roomId, token);
    p.token = token; // the client reconnects with it later
    await this.send(name, { type: 'auth-refresh', token }, {
      label: `${name} auth-refresh ${token} -> ${perm ?? 'rejected'}`,
      expectClose: perm === null,
      permAfter: perm ?? p.perm,
    });
  }

  /** Client-side close of `name` on both servers. */
  async close(name) {
    const p = this.pairs.get(name);
    if (!p || !p.open) throw new Error(`internal: ${name} is not open`);
    this.beginStep(`${name} closes`);
    for (const side of SIDES) p.conns[side].close();
    await this.waitStep({ actor: p, marker: (msgs, c) => c.closed, others: 1 });
  }

  /** A fresh socket asks for everything (lastTimestamp 0): the final document. */
  async finalDocument() {
    const name = 'final';
    const p = await this.connect(name, {
      first: { type: 'reconnect', lastTimestamp: 0, protocolVersion: 2 },
      label: 'final document: fresh socket, reconnect lastTimestamp 0',
    });
    const docOf = (c) => {
      const m = c.frames.find((f) => f.msg.type === 'patch' && f.msg.clientId === '' && f.msg.documentPatches);
      return m?.msg.documentPatches?.[0] ?? {};
    };
    this.finalDocs = { a: docOf(p.conns.a), b: docOf(p.conns.b) };
  }

  async closeAll() {
    // Frames that arrive while every socket is closing at once (clientCount updates racing the
    // closes) depend on socket timing, not on the server's rules: they are not compared.
    if (this.teardownStep === undefined) {
      this.beginStep('teardown');
      this.teardownStep = this.step;
    }
    for (const c of this.allConns) {
      for (const side of SIDES) {
        if (!c[side].closed) c[side].close();
      }
    }
    await Promise.all(
      this.allConns.flatMap((c) =>
        SIDES.map((s) => waitUntil(() => c[s].closed, [c[s]], 1000)),
      ),
    );
  }

  /** Compare every socket's frames between the servers. Returns mismatch lines. */
  compare() {
    const out = [...this.extraMismatches];
    const compared = (c) => c.frames.filter((f) => f.step !== this.teardownStep);
    for (const { label, a, b } of this.allConns) {
      const [framesA, framesB] = [compared(a), compared(b)];
      const n = Math.max(framesA.length, framesB.length);
      let shown = 0;
      for (let i = 0; i < n; i++) {
        const fa = framesA[i];
        const fb = framesB[i];
        if (fa && fb && jsonEqual(fa.msg, fb.msg)) continue;
        const step = fa?.step ?? fb?.step;
        const stepB = fb?.step;
        const where =
          `step ${step}${stepB !== undefined && stepB !== step ? `/${stepB}` : ''} ` +
          `(${this.labels.get(step)}) socket ${label} frame #${i}`;
        if (shown < 8) {
          out.push(
            `${where}\n      A: ${fa ? short(fa.msg, 600) : '(no frame)'}\n      B: ${fb ? short(fb.msg, 600) : '(no frame)'}`,
          );
        } else if (shown === 8) {
          out.push(`socket ${label}: more differing frames not shown`);
        }
        shown++;
        this.mismatchCount++;
      }
    }
    if (this.finalDocs && !jsonEqual(this.finalDocs.a, this.finalDocs.b)) {
      out.push(
        `final document differs\n      A: ${short(this.finalDocs.a, 2000)}\n      B: ${short(this.finalDocs.b, 2000)}`,
      );
      this.mismatchCount++;
    }
    return out;
  }
}

function defaultToken() {
  return TOKENS ? TOKENS.rw : undefined;
}

function describe(name, f) {
  if (f.type === 'patch') {
    const parts = [];
    if (f.documentPatches !== undefined) parts.push(`doc ${short(f.documentPatches, 120)}`);
    if (f.ephemeralPatches !== undefined) parts.push(`eph ${short(f.ephemeralPatches, 80)}`);
    return `${name} patch ${parts.join(' ') || '(no patches)'}`;
  }
  if (f.type === 'reconnect') {
    return `${name} reconnect v${f.protocolVersion ?? '(missing)'} lastTimestamp ${f.lastTimestamp}` +
      `${f.documentPatches ? ` doc ${short(f.documentPatches, 100)}` : ''}` +
      `${f.ephemeralPatches ? ` eph ${short(f.ephemeralPatches, 60)}` : ''}`;
  }
  return `${name} ${short(f, 120)}`;
}

/** Resolve when cond() holds (re-checked on every frame/close of `conns`), false on timeout. */
function waitUntil(cond, conns, timeoutMs) {
  if (cond()) return Promise.resolve(true);
  return new Promise((resolve) => {
    const check = () => {
      if (cond()) finish(true);
    };
    const finish = (v) => {
      clearTimeout(timer);
      for (const c of conns) c.waiters.delete(check);
      resolve(v);
    };
    const timer = setTimeout(() => finish(cond()), timeoutMs);
    for (const c of conns) c.waiters.add(check);
  });
}

// ---------------------------------------------------------------------------
// Frame builders (shapes the real client produces)
// ---------------------------------------------------------------------------

const reconnect = (lastTimestamp, extra = {}) => ({ type: 'reconnect', lastTimestamp, protocolVersion: 2, ...extra });

function patch(p, { doc, eph, seed = false } = {}) {
  const f = { type: 'patch', messageId: seed ? `seed-${p.clientId}` : p.nextMessageId() };
  if (doc !== undefined) f.documentPatches = doc;
  if (eph !== undefined) f.ephemeralPatches = eph;
  return f;
}

const buf = (len, runs) => ({ __buf: 1, len, runs });

// ---------------------------------------------------------------------------
// Scripted cases
// ---------------------------------------------------------------------------

const scripts = {};

scripts['frame-types'] = async (run) => {
  const c1 = await run.connect('c1', { first: reconnect(0) });
  const c2 = await run.connect('c2', { first: reconnect(0) });
  await run.send('c1', patch(c1, { doc: [{ 'e1/shape': { _exists: true, x: 1, y: 2, color: 'red' } }] }));
  // Several document patches in one request share one timestamp and apply in order.
  await run.send('c2', patch(c2, {
    doc: [
      { 'e2/shape': { _exists: true, x: 10, y: 20 } },
      { 'e1/shape': { x: 5 }, 'e2/shape': { y: 21 } },
    ],
  }));
  await run.send('c2', patch(c2, { eph: [{ [`${c2.clientId}/cursor`]: { _exists: true, x: 3, y: 4 } }] }));
  await run.send('c1', patch(c1, {
    doc: [{ 'e1/shape': { color: 'blue' }, 'SINGLETON/camera': { _exists: true, zoom: 1.5 } }],
    eph: [{ [`${c1.clientId}/cursor`]: { _exists: true, x: 7, y: 8 } }],
  }));
  // Newcomer: ephemeral snapshot of the others on join, clientCount, then the reply.
  await run.connect('c3', { first: reconnect(0) });
  await run.connect('c4', { first: { type: 'reconnect', lastTimestamp: 0, protocolVersion: 1 } });
  await run.close('c3');
  await run.close('c2');
  await run.finalDocument();
};

scripts['patch-shapes'] = async (run) => {
  const c1 = await run.connect('c1', { first: reconnect(0) });
  await run.connect('c2', { first: reconnect(0) });
  const key = `${c1.clientId}/cursor`;
  await run.send('c1', patch(c1, { doc: [{ 'e1/shape': { _exists: true, x: 1 } }] }), { label: 'doc only' });
  await run.send('c1', patch(c1, { eph: [{ [key]: { _exists: true, x: 1 } }] }), { label: 'eph only' });
  await run.send('c1', patch(c1, { doc: [{ 'e1/shape': { x: 2 } }], eph: [{ [key]: { x: 2 } }] }), { label: 'doc and eph' });
  await run.send('c1', patch(c1, {}), { label: 'neither (fields absent): no ack' });
  await run.send('c1', patch(c1, { doc: [], eph: [] }), { label: 'neither (empty arrays): no ack' });
  await run.send('c1', patch(c1, { doc: [] }), { label: 'empty doc array only: no ack' });
  await run.send('c1', patch(c1, { doc: [], eph: [{ [key]: { x: 3 } }] }), { label: 'empty doc + eph' });
  await run.send('c1', patch(c1, { doc: [{ 'e1/shape': { x: 4 } }], eph: [] }), { label: 'doc + empty eph' });
  await run.send('c1', patch(c1, { doc: [{ 'e1/shape': { x: 5 } }] }), { label: 'doc after the empty ones' });
  await run.finalDocument();
};

scripts['tombstone-recreate'] = async (run) => {
  const c1 = await run.connect('c1', { first: reconnect(0) });
  const c2 = await run.connect('c2', { first: reconnect(0) });
  await run.send('c1', patch(c1, { doc: [{ 'e1/shape': { _exists: true, x: 1, y: 2, color: 'red' } }] }));
  await run.send('c2', patch(c2, { doc: [{ 'e1/shape': { x: 9 } }] }));
  await run.send('c1', patch(c1, { doc: [{ 'e1/shape': { _exists: false } }] }), { label: 'delete e1' });
  const afterDelete = run.clock;
  await run.send('c2', patch(c2, { doc: [{ 'e1/shape': { y: 5 } }] }), { label: 'partial to tombstone (dropped, relayed)' });
  await run.send('c1', patch(c1, { doc: [{ 'ghost/shape': { _exists: false } }] }), { label: 'delete a key that never existed' });
  await run.connect('mid', { first: reconnect(afterDelete - 1), label: 'mid: reconnect just before the delete' });
  await run.send('c2', patch(c2, { doc: [{ 'e1/shape': { _exists: true, x: 100 } }] }), { label: 're-create e1 with fewer fields' });
  await run.send('c1', patch(c1, { doc: [{ 'e1/shape': { color: 'green' } }] }), { label: 'partial after re-create' });
  await run.send('c1', patch(c1, { doc: [{ 'e1/shape': { _exists: false }, 'e2/shape': { _exists: true, x: 1 } }] }));
  await run.send('c2', patch(c2, { doc: [{ 'e1/shape': { _exists: true, y: 7 } }] }), { label: 're-create again' });
  await run.connect('mid2', { first: reconnect(afterDelete), label: 'mid2: reconnect at the delete' });
  await run.finalDocument();
};

scripts['partial-absent'] = async (run) => {
  const c1 = await run.connect('c1', { first: reconnect(0) });
  const c2 = await run.connect('c2', { first: reconnect(0) });
  await run.send('c1', patch(c1, { doc: [{ 'nope/shape': { x: 1, y: 2 } }] }), { label: 'partial to an absent key (ack, relay, not stored)' });
  await run.send('c1', patch(c1, { doc: [{ 'nope/shape': { x: 1 }, 'yes/shape': { _exists: true, x: 1 } }] }), { label: 'absent partial + create in one patch' });
  await run.send('c2', patch(c2, { doc: [{ 'yes/shape': { _exists: true, y: 2 } }] }), { label: '_exists:true on a live key merges' });
  await run.send('c2', patch(c2, { doc: [{ 'nope/shape': { _exists: true, z: 3 } }] }), { label: 'create the absent key' });
  await run.send('c1', patch(c1, { eph: [{ [`${c1.clientId}/sel`]: { ids: [1] } }] }), { label: 'partial eph to an absent eph key' });
  await run.connect('c3', { first: reconnect(0) });
  await run.finalDocument();
};

scripts['buffer-deltas'] = async (run) => {
  const c1 = await run.connect('c1', { first: reconnect(0) });
  const c2 = await run.connect('c2', { first: reconnect(0) });
  const k = 's1/stroke';
  const d = (label, value, p = c1) => run.send(p.name, patch(p, { doc: [value] }), { label });
  await d('create with pts', { [k]: { _exists: true, pts: [1, 2, 3, 4], w: 2 } });
  await d('grow', { [k]: { pts: buf(6, [[4, [5, 6]]]) } });
  await d('shrink', { [k]: { pts: buf(3, []) } }, c2);
  await d('change in the middle', { [k]: { pts: buf(3, [[1, [9]]]) } });
  await d('runs outside the range', { [k]: { pts: buf(4, [[3, [7, 8, 9]], [10, [1]]]) } });
  await d('zero-fill a gap', { [k]: { pts: buf(8, [[7, [1]]]) } });
  await d('two runs', { [k]: { pts: buf(8, [[0, [0.5]], [5, [5.5, 6.5]]]) } }, c2);
  await d('length 0', { [k]: { pts: buf(0, []) } });
  await d('grow from empty', { [k]: { pts: buf(3, [[0, [1, 2, 3]]]) } });
  await d('delta on a field that is absent', { [k]: { other: buf(2, [[1, [4]]]) } });
  await d('delta on a null field', { [k]: { w: null } });
  await d('... then a delta on it', { [k]: { w: buf(2, [[0, [3]]]) } });
  await d('create from a delta', { 's2/stroke': { _exists: true, pts: buf(3, [[1, [5]]]) } });
  await d('partial delta to an absent key (relayed, not stored)', { 's3/stroke': { pts: buf(2, [[0, [1, 2]]]) } });
  await run.send('c1', patch(c1, {
    doc: [{ [k]: { pts: buf(5, [[3, [4, 5]]]) } }, { [k]: { pts: buf(6, [[5, [6]]]) } }],
  }), { label: 'two deltas for one field in one request' });
  await d('full array replaces', { [k]: { pts: [7, 7] } }, c2);
  await run.close('c2');
  await run.connect('c2', {
    first: reconnect(c2.cursor, { documentPatches: [{ [k]: { pts: buf(4, [[2, [8, 9]]]) } }] }),
    label: 'c2 reconnects with a delta in its offline patches',
  });
  await run.connect('c3', { first: reconnect(0), label: 'c3 joins: full arrays' });
  await run.finalDocument();
};

// Non-array bases: the reference's applyBufferDelta reads `base.length` on whatever is
// there (a number gives NaN -> holes -> nulls; a string copies its characters).
scripts['buffer-nonarray-base'] = async (run) => {
  const c1 = await run.connect('c1', { first: reconnect(0) });
  await run.connect('c2', { first: reconnect(0) });
  const k = 'q/stroke';
  await run.send('c1', patch(c1, { doc: [{ [k]: { _exists: true, n: 5, s: 'abc', o: { a: 1 } } }] }));
  await run.send('c1', patch(c1, { doc: [{ [k]: { n: buf(3, [[0, [1]]]) } }] }), { label: 'delta on a number' });
  await run.send('c1', patch(c1, { doc: [{ [k]: { o: buf(2, [[1, [2]]]) } }] }), { label: 'delta on an object' });
  await run.send('c1', patch(c1, { doc: [{ [k]: { s: buf(4, [[3, [4]]]) } }] }), { label: 'delta on a string' });
  await run.connect('c3', { first: reconnect(0) });
  await run.finalDocument();
};

scripts['reconnect-cursors'] = async (run) => {
  const c1 = await run.connect('c1', { first: reconnect(0) });
  await run.send('c1', patch(c1, { doc: [{ 'a/shape': { _exists: true, x: 1, y: 1 }, 'b/shape': { _exists: true, x: 1 } }] }));
  await run.send('c1', patch(c1, { doc: [{ 'a/shape': { x: 2 } }] }));
  await run.send('c1', patch(c1, { doc: [{ 'c/shape': { _exists: true, x: 3 } }] }));
  await run.send('c1', patch(c1, { doc: [{ 'b/shape': { _exists: false } }] }));
  await run.send('c1', patch(c1, { doc: [{ 'a/shape': { y: 5 } }], eph: [{ [`${c1.clientId}/cursor`]: { _exists: true, x: 0 } }] }));
  const now = run.clock;
  await run.connect('r0', { first: reconnect(0), label: 'reconnect lastTimestamp 0' });
  await run.connect('r2', { first: reconnect(2), label: 'reconnect lastTimestamp 2 (middle)' });
  await run.connect('rnow', { first: reconnect(now), label: 'reconnect at the clock' });
  const ahead = await run.connect('rahead', { first: reconnect(now + 10), label: 'reconnect ahead of the clock (resync)' });
  // The real client answers resync with an ordinary patch of what it knows after `since`.
  await run.send('rahead', {
    type: 'patch',
    messageId: `${ahead.clientId}-resync-1`,
    documentPatches: [{ 'a/shape': { x: 42 }, 'lost/shape': { _exists: true, x: 7 } }],
  }, { label: 'rahead answers the resync' });
  await run.connect('roff', {
    first: reconnect(2, {
      documentPatches: [{ 'a/shape': { x: 3 }, 'b/shape': { _exists: true, x: 9 }, 'd/shape': { y: 1 } }],
      ephemeralPatches: [{ 'roff/cursor': { _exists: true, x: 1 } }],
    }),
    label: 'reconnect in the middle with offline doc + eph patches',
  });
  await run.connect('roffahead', {
    first: reconnect(run.clock + 3, { documentPatches: [{ 'c/shape': { x: 99 } }] }),
    label: 'reconnect ahead of the clock with offline patches',
  });
  await run.close('r0');
  await run.connect('r0', { first: reconnect(run.pairs.get('r0').cursor), label: 'r0 comes back at its cursor' });
  await run.finalDocument();
};

scripts['version-mismatch'] = async (run) => {
  const c1 = await run.connect('c1', { first: reconnect(0) });
  await run.send('c1', patch(c1, { doc: [{ 'a/shape': { _exists: true, x: 1 } }] }));
  await run.connect('v1', {
    first: { type: 'reconnect', lastTimestamp: 0, protocolVersion: 1, documentPatches: [{ 'a/shape': { x: 666 } }] },
    label: 'protocolVersion 1 with patches (not applied)',
  });
  await run.connect('vmissing', {
    first: { type: 'reconnect', lastTimestamp: 0, ephemeralPatches: [{ 'vm/cursor': { _exists: true } }] },
    label: 'protocolVersion missing',
  });
  await run.connect('v3', { first: { type: 'reconnect', lastTimestamp: 0, protocolVersion: 3 }, label: 'protocolVersion 3' });
  await run.send('c1', patch(c1, { doc: [{ 'a/shape': { y: 1 } }] }));
  await run.finalDocument();
};

scripts['ephemeral-leave'] = async (run) => {
  const c1 = await run.connect('c1', { first: reconnect(0) });
  const cur = (p) => `${p.clientId}/cursor`;
  const sel = (p) => `${p.clientId}/selection`;
  await run.send('c1', patch(c1, { eph: [{ [cur(c1)]: { _exists: true, x: 1 }, [sel(c1)]: { _exists: true, ids: ['a'] } }] }));
  const c2 = await run.connect('c2', { first: reconnect(0), label: 'c2 joins (gets c1 presence)' });
  await run.send('c2', patch(c2, { eph: [{ [cur(c2)]: { _exists: true, x: 2 } }] }));
  await run.connect('c3', { first: reconnect(0), label: 'c3 joins (gets c1+c2 presence)' });
  await run.send('c1', patch(c1, { eph: [{ [sel(c1)]: { _exists: false } }] }), { label: 'c1 deletes its selection' });
  await run.connect('c4', { first: reconnect(0), label: 'c4 joins after an ephemeral deletion' });
  await run.send('c1', patch(c1, { eph: [{ [`${c1.clientId}/hover`]: { x: 1 } }] }), { label: 'c1 partial eph to an absent key' });
  await run.close('c1');
  await run.send('c2', patch(c2, { eph: [{ [cur(c2)]: { x: 3 } }] }));
  await run.close('c2');
  await run.connect('c5', { first: reconnect(0), label: 'c5 joins: nobody has presence' });
  await run.close('c3');
  await run.finalDocument();
};

scripts['client-count'] = async (run) => {
  await run.connect('c1', { first: reconnect(0) });
  await run.connect('c2', { first: reconnect(0) });
  await run.connect('c3', { first: reconnect(0) });
  await run.close('c2');
  await run.connect('c4', { first: reconnect(0) });
  await run.close('c1');
  await run.close('c4');
  await run.connect('c2', { first: reconnect(0), label: 'c2 comes back' });
  await run.close('c3');
  await run.finalDocument();
};

scripts['seed-style'] = async (run) => {
  const s1 = run.pair('seed1');
  await run.connect('seed1', {
    first: patch(s1, { doc: [{ 'a/shape': { _exists: true, x: 1 }, 'b/shape': { _exists: true, y: 2 } }], seed: true }),
    label: 'seed client: first frame is a patch (empty room)',
  });
  await run.close('seed1');
  await run.connect('c1', { first: reconnect(0) });
  const s2 = run.pair('seed2');
  await run.connect('seed2', {
    first: patch(s2, { doc: [{ 'c/shape': { _exists: true, x: 3 } }], seed: true }),
    label: 'seed client into a room with a client',
  });
  await run.close('seed2');
  await run.finalDocument();
};

scripts.auth = async (run) => {
  if (!TOKENS || !TOKENS.ro) return 'skipped';
  const { rw, rw2, ro } = TOKENS;
  const w = await run.connect('w', { first: reconnect(0), token: rw });
  const r = await run.connect('r', { first: reconnect(0), token: ro, label: 'readonly client joins' });
  await run.send('w', patch(w, { doc: [{ 'a/shape': { _exists: true, x: 1 } }] }));
  await run.send('r', patch(r, { doc: [{ 'a/shape': { x: 666 }, 'ro/shape': { _exists: true } }] }), { label: 'readonly doc patch: acked, not applied' });
  await run.send('r', patch(r, { eph: [{ [`${r.clientId}/cursor`]: { _exists: true } }] }), { label: 'readonly eph patch: acked, not applied' });
  await run.connect('r2', {
    first: reconnect(run.clock + 5, { documentPatches: [{ 'a/shape': { x: 777 } }] }),
    token: ro,
    label: 'readonly reconnect ahead of the clock with patches: no resync, not applied',
  });
  await run.authRefresh('r', rw2);
  await run.send('r', patch(r, { doc: [{ 'a/shape': { x: 2 } }] }), { label: 'after refresh to readwrite: applied' });
  await run.authRefresh('r', ro);
  await run.send('r', patch(r, { doc: [{ 'a/shape': { x: 3 } }] }), { label: 'after refresh to readonly: dropped' });
  await run.authRefresh('r', rw);
  await run.send('r', patch(r, { doc: [{ 'a/shape': { y: 4 } }] }), { label: 'back to readwrite: applied' });
  await run.send('w', patch(w, { eph: [{ [`${w.clientId}/cursor`]: { _exists: true, x: 1 } }] }));
  await run.authRefresh('w', 'no-such-token');
  await run.authRefresh('r2', TOKENS.prefix ? TOKENS.prefix.token : 'no-such-token-2');
  await run.connect('bad', { first: reconnect(0), token: 'no-such-token', label: 'connect with an unknown token' });
  await run.connect('none', { first: reconnect(0), token: '', label: 'connect without a token' });
  if (TOKENS.prefix) {
    await run.connect('pfx-no', { first: reconnect(0), token: TOKENS.prefix.token, label: 'prefix token, other room' });
    await run.connect('pfx-yes', {
      first: reconnect(0),
      token: TOKENS.prefix.token,
      room: `${TOKENS.prefix.prefix}${run.tag}`,
      label: 'prefix token, matching room',
    });
    await run.close('pfx-yes');
  }
  await run.connect('w', { first: reconnect(w.cursor), token: rw, label: 'w comes back with a valid token' });
  await run.finalDocument();
  return undefined;
};

// ---------------------------------------------------------------------------
// Randomized
// ---------------------------------------------------------------------------

async function randomScript(run, seed, steps) {
  const r = rng(seed);
  const nClients = 2 + r.int(3); // 2..4
  const names = Array.from({ length: nClients }, (_, i) => `r${i}`);
  const readonlyName = TOKENS?.ro && nClients >= 3 && r.chance(0.5) ? names[nClients - 1] : null;
  const keys = ['e0/shape', 'e1/shape', 'e2/shape', 'e3/shape', 'e0/style', 'SINGLETON/camera'];
  const fields = ['x', 'y', 'c'];
  const value = (f) => (f === 'c' ? r.pick(['red', 'green', 'blue', '']) : r.range(-5, 50));
  const arr = () => Array.from({ length: r.int(6) }, () => r.range(0, 99));

  const componentValue = () => {
    const kind = r.int(10);
    if (kind < 2) return { _exists: true, ...Object.fromEntries(fields.filter(() => r.chance(0.7)).map((f) => [f, value(f)])), ...(r.chance(0.5) ? { pts: arr() } : {}) };
    if (kind < 3) return { _exists: false };
    if (kind < 5) {
      const len = r.int(8);
      const runs = [];
      const nRuns = r.int(3);
      for (let i = 0; i < nRuns && len > 0; i++) {
        const off = r.int(len);
        runs.push([off, Array.from({ length: 1 + r.int(Math.min(3, len - off)) }, () => r.range(0, 99))]);
      }
      return { pts: buf(len, runs) };
    }
    if (kind < 6) return { pts: arr() };
    return Object.fromEntries(Array.from({ length: 1 + r.int(2) }, () => {
      const f = r.pick(fields);
      return [f, value(f)];
    }));
  };
  const docPatch = () => {
    const out = {};
    const n = 1 + r.int(3);
    for (let i = 0; i < n; i++) out[r.pick(keys)] = componentValue();
    return out;
  };
  const ephPatch = (p) => {
    const k = `${p.clientId}/${r.pick(['cursor', 'selection'])}`;
    const kind = r.int(6);
    if (kind === 0) return { [k]: { _exists: false } };
    if (kind < 3) return { [k]: { _exists: true, x: r.range(0, 9), y: r.range(0, 9) } };
    return { [k]: { x: r.range(0, 9) } };
  };
  const tokenFor = (name) => (name === readonlyName ? TOKENS.ro : defaultToken());
  const reconnectFrame = (p) => {
    const choice = r.int(10);
    const ts = choice < 6 ? p.cursor : choice < 8 ? 0 : r.int(run.clock + 1);
    const extra = {};
    if (r.chance(0.3)) extra.documentPatches = [docPatch()];
    if (r.chance(0.3)) extra.ephemeralPatches = [ephPatch(p)];
    return reconnect(ts, extra);
  };

  // Start with two clients, the first alone (no concurrent first connects).
  await run.connect(names[0], { first: reconnect(0), token: tokenFor(names[0]) });
  await run.connect(names[1], { first: reconnect(0), token: tokenFor(names[1]) });
  for (let i = 0; i < steps; i++) {
    const open = run.openPairs();
    const closed = names.filter((n) => !run.pairs.get(n)?.open);
    const roll = r.int(100);
    if ((roll < 8 && closed.length) || open.length === 0) {
      const n = r.pick(closed);
      const p = run.pair(n, { token: tokenFor(n) });
      await run.connect(n, { first: reconnectFrame(p), token: tokenFor(n) });
    } else if (roll < 14 && open.length > 1) {
      await run.close(r.pick(open).name);
    } else {
      const p = r.pick(open);
      const kind = r.int(10);
      if (kind < 6) await run.send(p.name, patch(p, { doc: [docPatch()] }));
      else if (kind < 8) await run.send(p.name, patch(p, { eph: [ephPatch(p)] }));
      else await run.send(p.name, patch(p, { doc: [docPatch()], eph: [ephPatch(p)] }));
    }
  }
  await run.finalDocument();
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

const SCRIPTED = [
  'frame-types',
  'patch-shapes',
  'tombstone-recreate',
  'partial-absent',
  'buffer-deltas',
  'buffer-nonarray-base',
  'reconnect-cursors',
  'version-mismatch',
  'ephemeral-leave',
  'client-count',
  'seed-style',
  'auth',
];

async function runScript(name, urls, fn) {
  const run = new Run(name, urls);
  const t0 = Date.now();
  let note;
  try {
    note = await fn(run);
  } catch (err) {
    run.closeAll().catch(() => {});
    throw err;
  }
  await run.closeAll();
  const lines = run.compare();
  run.mismatchCount += run.extraMismatches.length;
  const ms = Date.now() - t0;
  if (note === 'skipped') {
    process.stdout.write(`script ${name}: skipped (needs --tokens with a readonly token; servers must use the same file)\n`);
    return { ran: false, steps: 0, mismatches: 0 };
  }
  if (lines.length) {
    process.stdout.write(`script ${name}: ${run.mismatchCount} mismatch(es), ${run.step} steps, ${ms} ms\n`);
    for (const l of lines) process.stdout.write(`  MISMATCH ${l}\n`);
  } else {
    const frames = run.allConns.reduce((n, c) => n + c.a.frames.length, 0);
    process.stdout.write(`script ${name}: ok (${run.step} steps, ${frames} frames per server, ${ms} ms)\n`);
  }
  if (args.dump) {
    for (const c of run.allConns) {
      process.stdout.write(`  socket ${c.label} (clientId ${c.pair.clientId}):\n`);
      for (const f of c.a.frames) {
        process.stdout.write(`    step ${String(f.step).padStart(3)} ${short(f.msg, 300)}\n`);
      }
    }
  }
  if (run.timeouts.length) {
    process.stdout.write(`  note: ${run.timeouts.length} step wait(s) hit the ${STEP_TIMEOUT_MS} ms timeout: ${run.timeouts.slice(0, 5).join('; ')}\n`);
  }
  return { ran: true, steps: run.step, mismatches: run.mismatchCount };
}

async function main() {
  if (args.list) {
    process.stdout.write(`${[...SCRIPTED, 'random', 'all'].join('\n')}\n`);
    return 0;
  }
  if (!args.a || !args.b) {
    process.stderr.write(USAGE);
    return 2;
  }
  const urls = { a: assertLocalUrl(args.a, '--a'), b: assertLocalUrl(args.b, '--b') };
  if (args.tokens) TOKENS = loadTokens(args.tokens);
  const which = args.script ?? 'all';
  const jobs = [];
  const skip = new Set((args.skip ?? '').split(',').filter(Boolean));
  if (which === 'all' || SCRIPTED.includes(which)) {
    for (const s of which === 'all' ? SCRIPTED : [which]) {
      if (!skip.has(s)) jobs.push([s, (run) => scripts[s](run)]);
    }
  }
  if (which === 'all' || which === 'random') {
    for (const seed of SEEDS) jobs.push([`random-seed-${seed}`, (run) => randomScript(run, seed, STEPS)]);
  }
  if (jobs.length === 0) {
    process.stderr.write(`unknown script ${which} (try --list)\n`);
    return 2;
  }
  let scriptsRun = 0;
  let steps = 0;
  let mismatches = 0;
  for (const [name, fn] of jobs) {
    const res = await runScript(name, urls, fn);
    if (res.ran) scriptsRun++;
    steps += res.steps;
    mismatches += res.mismatches;
  }
  process.stdout.write(`differential: ${scriptsRun} scripts, ${steps} steps, ${mismatches} mismatches\n`);
  return mismatches === 0 ? 0 : 1;
}

process.on('unhandledRejection', (err) => {
  process.stdout.write(`unhandled rejection: ${err?.stack ?? err}\n`);
  process.exit(3);
});

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stdout.write(`differential: error: ${err?.stack ?? err}\n`);
    process.exit(3);
  },
);
