// Comparing any number of runs: their curves overlaid from each run's series read model
// (the run page's min/max buckets, never the event list), against iteration or wall time,
// and the config keys whose resolved values differ between them.

import { extremes } from './buckets.js';
import { flatten } from './diff.js';
import { joinSeries } from './decimate.js';

export const MAX_RUNS = 16;
export const AXES = ['iteration', 'time'];
// Twelve distinguishable line colours (Tableau 10 and two more), one per run, in order.
export const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac', '#1f77b4', '#8c564b'];
export const colorOf = (i) => PALETTE[i % PALETTE.length];

/** The run ids a compare URL names, in order, each once, at most MAX_RUNS. */
export function runIds(route) {
  const ids = route.runs?.length ? route.runs : [route.a, route.b];
  return [...new Set(ids.filter(Boolean))].slice(0, MAX_RUNS);
}

/**
 * A series' points [[x, y], ...] from its buckets, x being the iteration or, for the `time`
 * axis, the seconds since the run's first point: each extreme's time is interpolated
 * between the times of the bucket ends around it (a bucket knows its last point's time).
 */
export function curve(buckets, axis = 'iteration') {
  const points = extremes(buckets ?? []);
  if (axis !== 'time' || !buckets?.length) return points;
  const ends = buckets.map((b) => [b[1], b[9]]); // [x_last, t_last], x ascending
  const t0 = ends[0][1];
  let j = 0;
  return points.map(([x, y]) => {
    while (j < ends.length - 1 && ends[j][0] < x) j++;
    const [x1, t1] = ends[j];
    const [xp, tp] = j > 0 ? ends[j - 1] : [x1, t1];
    const t = x1 === xp ? t1 : tp + ((x - xp) / (x1 - xp)) * (t1 - tp);
    return [Math.max(0, t - t0), y];
  });
}

/** Several runs' curves on one sorted x axis: [xs, [ys per run]] (nulls between). */
export function overlay(curves) {
  return joinSeries(curves.map((pts) => [pts.map((p) => p[0]), pts.map((p) => p[1])]));
}

const same = (x, y) => JSON.stringify(x) === JSON.stringify(y);

/**
 * The config keys whose values are not the same in every run: `[{key, values: [per run]}]`,
 * sorted by key (`undefined` where a run's config lacks the key). `configs` are resolved
 * configs as nested values, one per run (null: unknown, left out of the comparison).
 */
export function differingKeys(configs) {
  const flat = configs.map((c) => (c ? flatten(c) : null));
  const known = flat.filter(Boolean);
  const keys = [...new Set(known.flatMap((f) => Object.keys(f)))].sort();
  return keys
    .filter((k) => known.some((f) => !same(f[k], known[0][k])))
    .map((key) => ({ key, values: flat.map((f) => (f ? f[key] : undefined)) }));
}
