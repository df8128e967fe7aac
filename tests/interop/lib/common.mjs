// Shared helpers for the interop scripts (no dependencies beyond the pinned packages).

import { randomBytes } from 'node:crypto';
import { materializeFields } from '@woven-ecs/canvas-store';

/** Parse `--flag value` / `--flag=value` pairs. `spec` maps flag -> 'string' | 'int' | 'bool'. */
export function parseArgs(argv, spec, usage) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') {
      process.stdout.write(usage);
      process.exit(0);
    }
    const eq = a.indexOf('=');
    const flag = eq >= 0 ? a.slice(0, eq) : a;
    const type = spec[flag];
    if (!type) {
      process.stderr.write(`unknown argument ${a}\n${usage}`);
      process.exit(2);
    }
    const name = flag.replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (type === 'bool') {
      out[name] = true;
      continue;
    }
    const v = eq >= 0 ? a.slice(eq + 1) : argv[++i];
    if (v === undefined) {
      process.stderr.write(`${flag} needs a value\n${usage}`);
      process.exit(2);
    }
    if (type === 'int') {
      if (!/^\d+$/.test(v)) {
        process.stderr.write(`${flag} needs a non-negative integer\n${usage}`);
        process.exit(2);
      }
      out[name] = Number(v);
    } else {
      out[name] = v;
    }
  }
  return out;
}

export function assertLocalUrl(url, flag) {
  let u;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`${flag}: not a URL: ${url}`);
  }
  if (u.protocol !== 'ws:' || (u.hostname !== '127.0.0.1' && u.hostname !== 'localhost')) {
    throw new Error(`${flag}: only ws://127.0.0.1:PORT is allowed (got ${url})`);
  }
  return url;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function randomId(prefix) {
  return `${prefix}-${randomBytes(6).toString('hex')}`;
}

/** Deterministic PRNG (mulberry32). */
export function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n) => Math.floor(next() * n),
    range: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: (arr) => arr[Math.floor(next() * arr.length)],
    chance: (p) => next() < p,
  };
}

/** Deep equality for JSON values; object key order is irrelevant. */
export function jsonEqual(a, b) {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!jsonEqual(a[i], b[i])) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  if (typeof a === 'object') {
    const ka = Object.keys(a);
    const kb = Object.keys(b);
    if (ka.length !== kb.length) return false;
    for (const k of ka) {
      if (!Object.prototype.hasOwnProperty.call(b, k)) return false;
      if (!jsonEqual(a[k], b[k])) return false;
    }
    return true;
  }
  return false;
}

/** JSON with sorted object keys (stable output for diffs). */
export function canon(v) {
  return JSON.stringify(sortKeys(v));
}
function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') {
    const out = {};
    for (const k of Object.keys(v).sort()) out[k] = sortKeys(v[k]);
    return out;
  }
  return v;
}

export function short(v, max = 400) {
  const s = typeof v === 'string' ? v : canon(v);
  return s.length > max ? `${s.slice(0, max)}... (${s.length} chars)` : s;
}

/**
 * Apply one document (or ephemeral) patch to a view with the rules the server and the
 * client's ECS adapter share: `_exists:false` deletes the key; a key that is absent
 * is only created by a value carrying `_exists:true` (a partial patch to an absent key
 * is dropped); otherwise fields are merged, buffer deltas materialized.
 */
export function applyPatchToView(view, patch) {
  for (const [key, value] of Object.entries(patch)) {
    if (!value || typeof value !== 'object') continue;
    if (value._exists === false) {
      delete view[key];
      continue;
    }
    const existing = view[key];
    if (!existing) {
      if (value._exists !== true) continue;
      view[key] = materializeFields(undefined, value);
      continue;
    }
    view[key] = materializeFields(existing, value);
  }
}
