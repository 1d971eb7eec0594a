// The server's series buckets (docs/protocol.md, "The run page"), drawn: each bucket is
// [x_first, x_last, x_min, y_min, x_max, y_max, n, v_first, v_last] — n consecutive points
// with their extremes and the run versions of its first and last point. Drawing each
// bucket's two extremes in x order shows every spike the full series has.

/** A bucket's extreme points [x, y], in x order (one when min and max are one point). */
export function extremes(buckets) {
  const points = [];
  for (const b of buckets) {
    if (b[2] === b[4]) points.push([b[2], b[3]]);
    else if (b[2] < b[4]) points.push([b[2], b[3]], [b[4], b[5]]);
    else points.push([b[4], b[5]], [b[2], b[3]]);
  }
  return points;
}

/** The buckets complete by run version `version` (a replay's curves as of then). */
export function until(buckets, version) {
  let hi = buckets.length;
  while (hi > 0 && buckets[hi - 1][8] > version) hi--;
  return hi === buckets.length ? buckets : buckets.slice(0, hi);
}

// Between two of its own points a series holds its previous value (a line, not dots);
// before its first and after its last it has none.
function stepFill(ys) {
  const last = ys.findLastIndex((y) => y !== null);
  let held = null;
  for (let i = 0; i < last; i++) {
    if (ys[i] === null) ys[i] = held;
    else held = ys[i];
  }
  return ys;
}

/**
 * Parallel arrays over the union of the series' x (uPlot's shape), null where a series has
 * no point: `{iteration: [...], [name]: [...]}` from `{[name]: buckets}`.
 */
export function columns(byName) {
  const xs = new Set();
  const maps = {};
  for (const [name, buckets] of Object.entries(byName)) {
    maps[name] = new Map(extremes(buckets ?? []));
    for (const x of maps[name].keys()) xs.add(x);
  }
  const iteration = [...xs].sort((a, b) => a - b);
  const out = { iteration };
  for (const [name, map] of Object.entries(maps)) out[name] = stepFill(iteration.map((x) => map.get(x) ?? null));
  return out;
}
