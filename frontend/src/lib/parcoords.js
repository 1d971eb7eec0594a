// Scales for the sweep page's parallel-coordinates plot: one vertical axis per parameter
// (and one for the objective), each trial a polyline across them. Numbers map linearly or,
// for a log-scaled parameter, by their logarithm; choices are spread evenly in their order.

/**
 * One axis over the values the trials took. `spec` is the sweep's space entry for the key
 * ({type: float|int|choice, low, high, log, choices}) when known.
 * Returns {key, kind, ticks, pos(value) → 0..1 or null}.
 */
export function makeAxis(key, values, spec = null) {
  const present = values.filter((v) => v !== null && v !== undefined);
  const isChoice =
    spec?.type === 'choice' || (spec === null && present.some((v) => typeof v !== 'number'));
  if (isChoice) {
    const choices = spec?.choices?.length ? spec.choices.map(String) : [...new Set(present.map(String))].sort();
    const n = choices.length;
    const pos = (v) => {
      const i = choices.indexOf(String(v));
      if (i < 0) return null;
      return n === 1 ? 0.5 : i / (n - 1);
    };
    return { key, kind: 'choice', ticks: choices.map((c) => ({ label: c, at: pos(c) })), pos };
  }
  const log = !!spec?.log;
  const nums = present.map(Number).filter((v) => Number.isFinite(v) && (!log || v > 0));
  let lo = spec?.low ?? Math.min(...nums);
  let hi = spec?.high ?? Math.max(...nums);
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) {
    lo = 0;
    hi = 1;
  }
  const f = log ? Math.log10 : (x) => x;
  const a = f(lo);
  const b = f(hi);
  const pos = (v) => {
    const x = Number(v);
    if (v === null || v === undefined || !Number.isFinite(x) || (log && x <= 0)) return null;
    if (b === a) return 0.5;
    return Math.min(1, Math.max(0, (f(x) - a) / (b - a)));
  };
  return { key, kind: log ? 'log' : 'linear', ticks: [lo, hi].map((t) => ({ label: t, at: pos(t) })), pos };
}

/**
 * The plot's geometry: axes spread over `width`, each trial a list of [x, y] points
 * (y = 0 at the top: the high end of an axis is drawn up). A trial missing a value at an
 * axis breaks its line there (a null point).
 */
export function layout(trials, axes, { width, height, pad = 30 }) {
  const n = axes.length;
  const xs = axes.map((_, i) => (n === 1 ? width / 2 : pad + (i * (width - 2 * pad)) / (n - 1)));
  const y = (p) => pad + (1 - p) * (height - 2 * pad);
  const lines = trials.map((t) => ({
    trial: t,
    points: axes.map((axis, i) => {
      const p = axis.pos(t.values[axis.key]);
      return p === null ? null : [xs[i], y(p)];
    }),
  }));
  return { xs, y, lines };
}

/** SVG path data of a polyline with gaps at null points. */
export function pathOf(points) {
  let d = '';
  let pen = false;
  for (const p of points) {
    if (!p) {
      pen = false;
      continue;
    }
    d += `${pen ? 'L' : 'M'}${p[0].toFixed(1)},${p[1].toFixed(1)}`;
    pen = true;
  }
  return d;
}

/** The best objective value so far after each told trial, in trial order. */
export function bestSoFar(trials, direction = 'maximize') {
  const better = direction === 'minimize' ? (a, b) => a < b : (a, b) => a > b;
  const xs = [];
  const ys = [];
  let best = null;
  for (const t of [...trials].sort((a, b) => a.number - b.number)) {
    if (typeof t.value !== 'number' || !Number.isFinite(t.value)) continue;
    if (best === null || better(t.value, best)) best = t.value;
    xs.push(t.number);
    ys.push(best);
  }
  return { number: xs, best: ys };
}
