// The runs table's view as data: which hyperparameter columns, which filters, which sort,
// whether archived runs show. It round-trips through the URL's query (`viewFromQuery` /
// `viewToQuery`), so a view can be bookmarked and shared; `visibleRuns` applies it to the
// server's summaries and the config values of the chosen columns (GET /api/runs/params).

export const BASE_COLUMNS = ['name', 'state', 'started', 'duration', 'iterations', 'dice'];
const SORT_DESC_FIRST = new Set(['started', 'duration', 'iterations', 'dice']);

export const DEFAULT_VIEW = Object.freeze({
  q: '', // name or id contains
  state: 'all',
  tag: null,
  sweep: null,
  where: [], // parameter conditions: [{key, op, value}]
  cols: [], // dotted config keys shown as columns
  sort: 'started', // a base column or `param:<key>`
  dir: -1, // 1 ascending, -1 descending
  archived: false,
});

const OPS = ['<=', '>=', '!=', '=', '<', '>', '~'];
const KEY = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$/;

/** `SOLVER.BASE_LR>=0.001` → {key, op, value}; null when it is not a condition. */
export function parseCondition(text) {
  const s = String(text).trim();
  for (const op of OPS) {
    const at = s.indexOf(op);
    if (at <= 0) continue;
    const key = s.slice(0, at).trim();
    const value = s.slice(at + op.length).trim();
    if (KEY.test(key) && value !== '') return { key, op, value };
  }
  return null;
}

export const conditionText = (c) => `${c.key}${c.op}${c.value}`;

function numeric(v) {
  if (typeof v === 'number') return v;
  if (typeof v !== 'string' || v.trim() === '') return NaN;
  return Number(v);
}

/** Whether a config value meets a condition: numbers compare as numbers, the rest as text. */
export function meets(value, { op, value: wanted }) {
  if (op === '~') return value != null && String(value).toLowerCase().includes(wanted.toLowerCase());
  const a = numeric(value);
  const b = numeric(wanted);
  const both = !Number.isNaN(a) && !Number.isNaN(b);
  if (op === '=' || op === '!=') {
    const same = both ? a === b : String(value ?? 'null').toLowerCase() === wanted.toLowerCase();
    return op === '=' ? same : !same;
  }
  if (!both) return false;
  return op === '<' ? a < b : op === '<=' ? a <= b : op === '>' ? a > b : a >= b;
}

const list = (s) => (s ? s.split(',').filter(Boolean) : []);

/** The view a URL query describes (unknown or malformed parts fall back to the default). */
export function viewFromQuery(query = {}) {
  const v = { ...DEFAULT_VIEW, where: [], cols: [] };
  if (query.q) v.q = query.q;
  if (query.state) v.state = query.state;
  if (query.tag) v.tag = query.tag;
  if (query.sweep) v.sweep = query.sweep;
  v.cols = list(query.cols).filter((k) => KEY.test(k));
  v.where = (query.where ? query.where.split(';') : []).map(parseCondition).filter(Boolean);
  const sort = query.sort;
  if (sort && (BASE_COLUMNS.includes(sort) || (sort.startsWith('param:') && KEY.test(sort.slice(6))))) v.sort = sort;
  if (query.dir === 'asc') v.dir = 1;
  else if (query.dir === 'desc') v.dir = -1;
  else v.dir = SORT_DESC_FIRST.has(v.sort) || v.sort.startsWith('param:') ? -1 : 1;
  v.archived = query.archived === '1';
  return v;
}

/** The URL query of a view: only what differs from the default, in a fixed order. */
export function viewToQuery(v) {
  const q = {};
  if (v.q) q.q = v.q;
  if (v.state && v.state !== 'all') q.state = v.state;
  if (v.tag) q.tag = v.tag;
  if (v.sweep) q.sweep = v.sweep;
  if (v.where.length) q.where = v.where.map(conditionText).join(';');
  if (v.cols.length) q.cols = v.cols.join(',');
  if (v.sort !== DEFAULT_VIEW.sort || v.dir !== DEFAULT_VIEW.dir) {
    q.sort = v.sort;
    q.dir = v.dir > 0 ? 'asc' : 'desc';
  }
  if (v.archived) q.archived = '1';
  return q;
}

/** Sorting by a column again flips it; a new column starts in its natural direction. */
export function sortBy(v, key) {
  if (v.sort === key) return { ...v, dir: -v.dir };
  return { ...v, sort: key, dir: SORT_DESC_FIRST.has(key) || key.startsWith('param:') ? -1 : 1 };
}

/** How long a run trained (as of `now` while it trains). */
export function runDurationS(r, now) {
  if (!r.started_at) return null;
  const end = r.ended_at ?? (r.state === 'Training' ? now : null);
  return end === null ? null : end - r.started_at;
}

function sortValue(r, key, params, now) {
  switch (key) {
    case 'name':
      return (r.name || '').toLowerCase();
    case 'state':
      return r.queued ? 'Queued' : (r.state ?? '');
    case 'started':
      return r.started_at ?? r.created_at ?? 0;
    case 'duration':
      return runDurationS(r, now);
    case 'iterations':
      return r.iteration ?? 0;
    case 'dice':
      return r.best_dice;
    default:
      return params?.[r.run_id]?.[key.slice(6)] ?? null;
  }
}

// Missing values sort last in either direction; numbers before text.
function compare(x, y, dir) {
  if (x == null || y == null) return x == null && y == null ? 0 : x == null ? 1 : -1;
  if (typeof x === 'number' && typeof y === 'number') return (x - y) * dir;
  if (typeof x === 'number') return -1;
  if (typeof y === 'number') return 1;
  return String(x).localeCompare(String(y), 'en', { numeric: true }) * dir;
}

/** The sweep a run is a trial of (its summary's `sweep`, else its `sweep:<id>` tag). */
export function sweepOf(r) {
  if (r.sweep?.id) return r.sweep.id;
  const tag = (r.tags ?? []).find((t) => t.startsWith('sweep:'));
  return tag ? tag.slice(6) : null;
}

/** The runs a view shows, in its order. `params`: run_id → {dotted key: value}. */
export function visibleRuns(summaries, v, params = {}, now = Date.now() / 1000) {
  const q = v.q.trim().toLowerCase();
  const rows = summaries.filter(
    (r) =>
      !r.missing &&
      !r.deleted &&
      (v.archived || !r.archived) &&
      (v.state === 'all' || (v.state === 'Queued' ? !!r.queued : r.state === v.state)) &&
      (!v.tag || (r.tags ?? []).includes(v.tag)) &&
      (!v.sweep || sweepOf(r) === v.sweep) &&
      (!q || (r.name || '').toLowerCase().includes(q) || r.run_id.includes(q)) &&
      v.where.every((c) => meets(params[r.run_id]?.[c.key] ?? null, c)),
  );
  return rows.sort(
    (a, b) =>
      compare(sortValue(a, v.sort, params, now), sortValue(b, v.sort, params, now), v.dir) ||
      (b.created_at ?? 0) - (a.created_at ?? 0),
  );
}

/** Every tag in use, with how many runs carry it, most used first. */
export function tagCounts(summaries) {
  const counts = new Map();
  for (const r of summaries) for (const t of r.tags ?? []) counts.set(t, (counts.get(t) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
}

/** The config keys a view needs values of (its columns, its conditions, its sort). */
export function neededKeys(v) {
  const keys = new Set([...v.cols, ...v.where.map((c) => c.key)]);
  if (v.sort.startsWith('param:')) keys.add(v.sort.slice(6));
  return [...keys].sort();
}

/** Keys matching a picker's search: every word appears in the key or its description. */
export function searchKeys(keys, text, limit = 50) {
  const words = text.toLowerCase().split(/\s+/).filter(Boolean);
  return keys
    .filter((k) => words.every((w) => k.key.toLowerCase().includes(w) || (k.description ?? '').toLowerCase().includes(w)))
    .slice(0, limit);
}

// Tags as contracts §1 allow: 1–64 characters of [A-Za-z0-9_.:/-].
export const TAG = /^[A-Za-z0-9_.:/-]{1,64}$/;
