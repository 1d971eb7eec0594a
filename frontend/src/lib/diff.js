// Config differences: a line diff of two YAML texts (the wizard's "diff against the preset")
// and a key-by-key diff of two resolved configs (comparing runs).

/**
 * Line diff by longest common subsequence. Returns rows
 * `{op: ' '|'-'|'+', text, a: lineNo|null, b: lineNo|null}` in order.
 */
export function diffLines(aText, bText) {
  const a = splitLines(aText);
  const b = splitLines(bText);
  // Trim the common head and tail: configs differ in a few lines.
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head++;
  let tail = 0;
  while (
    tail < a.length - head &&
    tail < b.length - head &&
    a[a.length - 1 - tail] === b[b.length - 1 - tail]
  )
    tail++;
  const am = a.slice(head, a.length - tail);
  const bm = b.slice(head, b.length - tail);
  const n = am.length;
  const m = bm.length;
  const rows = [];
  for (let i = 0; i < head; i++) rows.push({ op: ' ', text: a[i], a: i + 1, b: i + 1 });
  if (n * m > 4_000_000) {
    // Too large to align: everything removed, then everything added.
    am.forEach((t, i) => rows.push({ op: '-', text: t, a: head + i + 1, b: null }));
    bm.forEach((t, j) => rows.push({ op: '+', text: t, a: null, b: head + j + 1 }));
  } else {
    const w = m + 1;
    const lcs = new Uint32Array((n + 1) * w);
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        lcs[i * w + j] =
          am[i] === bm[j] ? lcs[(i + 1) * w + j + 1] + 1 : Math.max(lcs[(i + 1) * w + j], lcs[i * w + j + 1]);
      }
    }
    let i = 0;
    let j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && am[i] === bm[j]) {
        rows.push({ op: ' ', text: am[i], a: head + i + 1, b: head + j + 1 });
        i++;
        j++;
      } else if (j < m && (i === n || lcs[i * w + j + 1] >= lcs[(i + 1) * w + j])) {
        rows.push({ op: '+', text: bm[j], a: null, b: head + j + 1 });
        j++;
      } else {
        rows.push({ op: '-', text: am[i], a: head + i + 1, b: null });
        i++;
      }
    }
  }
  for (let k = 0; k < tail; k++) {
    const ai = a.length - tail + k;
    const bi = b.length - tail + k;
    rows.push({ op: ' ', text: a[ai], a: ai + 1, b: bi + 1 });
  }
  return rows;
}

function splitLines(text) {
  if (!text) return [];
  const lines = String(text).split(/\r?\n/);
  if (lines[lines.length - 1] === '') lines.pop();
  return lines;
}

/**
 * The changed rows with `context` unchanged lines around each change; skipped stretches
 * become `{op: '…', count}` rows.
 */
export function hunks(rows, context = 3) {
  const keep = new Array(rows.length).fill(false);
  rows.forEach((r, i) => {
    if (r.op !== ' ') {
      for (let k = Math.max(0, i - context); k <= Math.min(rows.length - 1, i + context); k++) keep[k] = true;
    }
  });
  const out = [];
  let skipped = 0;
  rows.forEach((r, i) => {
    if (keep[i]) {
      if (skipped) out.push({ op: '…', count: skipped });
      skipped = 0;
      out.push(r);
    } else skipped++;
  });
  if (skipped && out.length) out.push({ op: '…', count: skipped });
  return out;
}

/** How many lines were added and removed. */
export function diffStats(rows) {
  let added = 0;
  let removed = 0;
  for (const r of rows) {
    if (r.op === '+') added++;
    else if (r.op === '-') removed++;
  }
  return { added, removed };
}

/** A nested config as `{"SECTION.KEY": value}` (lists stay values). */
export function flatten(values, prefix = '', out = {}) {
  if (values === null || typeof values !== 'object' || Array.isArray(values)) {
    if (prefix) out[prefix] = values;
    return out;
  }
  for (const [k, v] of Object.entries(values)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) flatten(v, key, out);
    else out[key] = v;
  }
  return out;
}

const same = (x, y) => JSON.stringify(x) === JSON.stringify(y);

/** Keys whose values differ between two resolved configs: `[{key, a, b}]`, sorted by key. */
export function diffValues(a, b) {
  const fa = flatten(a ?? {});
  const fb = flatten(b ?? {});
  const keys = [...new Set([...Object.keys(fa), ...Object.keys(fb)])].sort();
  return keys.filter((k) => !same(fa[k], fb[k])).map((k) => ({ key: k, a: fa[k], b: fb[k] }));
}
