#!/usr/bin/env node
// Runs the npm reference server (@woven-ecs/canvas-store-server 2.0.2) over `ws`,
// the way a user of that package wires it up: RoomManager + acceptConnection +
// FileStorage / MemoryStorage.
//
//   node reference-server.mjs [--port 0] [--storage memory|file] [--data-dir DIR]
//                             [--tokens FILE] [--idle-timeout-ms N] [--save-throttle-ms N]
//
// Prints exactly one stdout line `listening on 127.0.0.1:<port>` once listening
// (same line as the weft binary). SIGTERM/SIGINT: closeAll() (flushes), exit 0.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { resolve } from 'node:path';
import { WebSocketServer } from 'ws';
import {
  acceptConnection,
  ConnectionClosedError,
  FileStorage,
  MemoryStorage,
  RoomManager,
} from '@woven-ecs/canvas-store-server';

function usage(msg) {
  if (msg) process.stderr.write(`reference-server: ${msg}\n`);
  process.stderr.write(
    'usage: node reference-server.mjs [--port 0] [--storage memory|file] [--data-dir DIR] ' +
      '[--tokens FILE] [--idle-timeout-ms N] [--save-throttle-ms N]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    port: 0,
    storage: 'memory',
    dataDir: undefined,
    tokens: undefined,
    idleTimeoutMs: undefined,
    saveThrottleMs: undefined,
  };
  const int = (name, v) => {
    if (v === undefined || !/^\d+$/.test(v)) usage(`${name} needs a non-negative integer`);
    return Number(v);
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    let [flag, val] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const next = () => (val !== undefined ? val : argv[++i]);
    switch (flag) {
      case '--port': opts.port = int(flag, next()); break;
      case '--storage': opts.storage = next(); break;
      case '--data-dir': opts.dataDir = next(); break;
      case '--tokens': opts.tokens = next(); break;
      case '--idle-timeout-ms': opts.idleTimeoutMs = int(flag, next()); break;
      case '--save-throttle-ms': opts.saveThrottleMs = int(flag, next()); break;
      case '-h': case '--help': usage(); break;
      default: usage(`unknown argument ${a}`);
    }
  }
  if (opts.storage !== 'memory' && opts.storage !== 'file') usage('--storage must be memory or file');
  if (opts.storage === 'file' && !opts.dataDir) usage('--storage file needs --data-dir DIR');
  if (opts.dataDir !== undefined && !opts.dataDir) usage('--data-dir needs a value');
  return opts;
}

const opts = parseArgs(process.argv.slice(2));

// ---------------------------------------------------------------------------
// Authorization
// ---------------------------------------------------------------------------

function loadTokens(file) {
  let parsed;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    usage(`cannot read tokens file ${file}: ${err.message}`);
  }
  if (!parsed || !Array.isArray(parsed.tokens)) usage(`tokens file ${file}: expected {"tokens":[...]}`);
  const table = new Map();
  for (const t of parsed.tokens) {
    if (!t || typeof t.token !== 'string' || !t.token) usage(`tokens file ${file}: entry without token`);
    if (t.permission !== 'readwrite' && t.permission !== 'readonly') {
      usage(`tokens file ${file}: token ${t.token}: permission must be readwrite or readonly`);
    }
    if (!Array.isArray(t.rooms) || t.rooms.some((r) => typeof r !== 'string')) {
      usage(`tokens file ${file}: token ${t.token}: rooms must be an array of strings`);
    }
    table.set(t.token, { permission: t.permission, rooms: t.rooms, metadata: t.metadata });
  }
  return table;
}

function roomAllowed(patterns, roomId) {
  for (const p of patterns) {
    if (p === '*') return true;
    if (p.endsWith('*') && roomId.startsWith(p.slice(0, -1))) return true;
    if (p === roomId) return true;
  }
  return false;
}

const tokenTable = opts.tokens ? loadTokens(resolve(opts.tokens)) : null;

// Used both for the connect and (via acceptConnection's onTokenRefresh) for auth-refresh.
// Throwing rejects: the connect is closed with 1008, a failed refresh closes the socket.
async function authorize({ roomId, token }) {
  if (!tokenTable) return { permissions: 'readwrite' };
  const entry = token ? tokenTable.get(token) : undefined;
  if (!entry) throw new Error('unknown token');
  if (!roomAllowed(entry.rooms, roomId)) throw new Error('room not allowed');
  return entry.metadata !== undefined
    ? { permissions: entry.permission, metadata: entry.metadata }
    : { permissions: entry.permission };
}

// ---------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------

// One MemoryStorage per room id for the life of the process, so a room that is
// evicted after its idle timeout reloads what it saved (like a file would).
const memoryStores = new Map();
function createStorage(roomId) {
  if (opts.storage === 'file') return new FileStorage({ dir: resolve(opts.dataDir), roomId });
  let s = memoryStores.get(roomId);
  if (!s) {
    s = new MemoryStorage();
    memoryStores.set(roomId, s);
  }
  return s;
}

const manager = new RoomManager(
  opts.idleTimeoutMs !== undefined ? { idleTimeout: opts.idleTimeoutMs } : {},
);

const roomOptions = (roomId) => ({
  createStorage: () => createStorage(roomId),
  ...(opts.saveThrottleMs !== undefined ? { saveThrottleMs: opts.saveThrottleMs } : {}),
});

// ---------------------------------------------------------------------------
// WebSocket server
// ---------------------------------------------------------------------------

const httpServer = createServer((req, res) => {
  res.writeHead(426, { 'content-type': 'text/plain' });
  res.end('websocket only\n');
});
const wss = new WebSocketServer({ server: httpServer });

function closeReason(err) {
  const msg = err && typeof err.message === 'string' ? err.message : 'unauthorized';
  // A close reason is limited to 123 bytes.
  return Buffer.from(msg).subarray(0, 120).toString();
}

wss.on('connection', (socket, request) => {
  let url = request.url ?? '/';
  // parseConnectUrl() insists on a token. With auth off a client may connect
  // without one (the real client only adds `token` when it has one): give the
  // package a placeholder so it gets as far as authorize(), which allows all.
  if (!tokenTable) {
    const u = new URL(url, 'http://_');
    if (!u.searchParams.get('token')) {
      u.searchParams.set('token', 'anonymous');
      url = u.pathname + u.search;
    }
  }

  let conn;
  try {
    conn = acceptConnection({ socket, url, request, manager, authorize, roomOptions });
  } catch (err) {
    socket.close(1008, closeReason(err));
    return;
  }
  socket.on('message', (data, isBinary) => {
    conn.onMessage(isBinary ? Buffer.from(data).toString('utf8') : data.toString());
  });
  socket.on('close', () => conn.onClose());
  socket.on('error', () => conn.onError());
  conn.ready.catch((err) => {
    if (err instanceof ConnectionClosedError) return;
    try {
      socket.close(1008, closeReason(err));
    } catch {
      // already gone
    }
  });
});

httpServer.on('error', (err) => {
  process.stderr.write(`reference-server: ${err.message}\n`);
  process.exit(1);
});

httpServer.listen(opts.port, '127.0.0.1', () => {
  const { port } = httpServer.address();
  process.stdout.write(`listening on 127.0.0.1:${port}\n`);
});

let shuttingDown = false;
async function shutdown() {
  if (shuttingDown) return;
  shuttingDown = true;
  try {
    await manager.closeAll();
  } catch (err) {
    process.stderr.write(`reference-server: closeAll failed: ${err?.message ?? err}\n`);
  }
  for (const client of wss.clients) {
    try {
      client.terminate();
    } catch {
      // ignore
    }
  }
  wss.close();
  httpServer.close();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
