// Chart data reduction: at most a few points per pixel column, so 100,000 points draw and
// zoom at interactive speed while every spike stays visible (min/max per bucket).

/** First index with xs[i] >= x (xs sorted ascending). */
export function lowerBound(xs, x) {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** First index with xs[i] > x. */
export function upperBound(xs, x) {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * Indices to keep so the plot of (xs, ys) over [x0, x1] at `buckets` pixel columns looks
 * the same as the full plot: per bucket its first, min, max and last point, in order. One
 * point on each side of the range is kept so lines run to the edges. Null ys are kept as
 * gaps only where a bucket is all null.
 */
export function decimateIndices(xs, ys, x0 = -Infinity, x1 = Infinity, buckets = 1000) {
  const n = xs.length;
  let start = x0 === -Infinity ? 0 : Math.max(0, lowerBound(xs, x0) - 1);
  let end = x1 === Infinity ? n : Math.min(n, upperBound(xs, x1) + 1);
  if (end - start <= buckets * 4) {
    const out = new Array(end - start);
    for (let i = start; i < end; i++) out[i - start] = i;
    return out;
  }
  const lo = xs[start];
  const hi = xs[end - 1];
  const width = (hi - lo) / buckets || 1;
  const out = [];
  let i = start;
  while (i < end) {
    const b = Math.min(buckets - 1, Math.floor((xs[i] - lo) / width));
    const limit = lo + (b + 1) * width;
    const first = i;
    let minI = -1;
    let maxI = -1;
    let last = i;
    for (; i < end && (xs[i] < limit || b === buckets - 1); i++) {
      const y = ys[i];
      last = i;
      if (y === null || y === undefined || Number.isNaN(y)) continue;
      if (minI < 0 || y < ys[minI]) minI = i;
      if (maxI < 0 || y > ys[maxI]) maxI = i;
    }
    // Keep order: first, then min/max in x order, then last, without repeats.
    const picks = [first];
    if (minI >= 0 && maxI >= 0) {
      if (minI <= maxI) picks.push(minI, maxI);
      else picks.push(maxI, minI);
    }
    picks.push(last);
    let prev = out.length ? out[out.length - 1] : -1;
    for (const p of picks) {
      if (p > prev) {
        out.push(p);
        prev = p;
      }
    }
  }
  return out;
}

/** Values of `arr` at `indices`. */
export function pick(arr, indices) {
  const out = new Array(indices.length);
  for (let k = 0; k < indices.length; k++) out[k] = arr[indices[k]] ?? null;
  return out;
}

/**
 * uPlot data [xs, ...ys] reduced for a plot `buckets` pixels wide over [x0, x1]; the first
 * y series decides which points matter.
 */
export function decimate(xs, yss, x0, x1, buckets) {
  const idx = decimateIndices(xs, yss[0] ?? [], x0, x1, buckets);
  return [pick(xs, idx), ...yss.map((ys) => pick(ys, idx))];
}

/**
 * TensorBoard-style smoothing: a debiased exponential moving average with weight in [0, 1)
 * (0 = raw). Nulls pass through as nulls and do not disturb the average.
 */
export function smooth(ys, weight, from = 0, prev = null) {
  const out = prev && from > 0 ? prev.out.slice(0, from) : [];
  let last = prev && from > 0 ? prev.last : 0;
  let count = prev && from > 0 ? prev.count : 0;
  for (let i = out.length; i < ys.length; i++) {
    const y = ys[i];
    if (y === null || y === undefined || !Number.isFinite(y)) {
      out.push(null);
      continue;
    }
    last = last * weight + (1 - weight) * y;
    count += 1;
    const debias = weight === 0 ? 1 : 1 - Math.pow(weight, count);
    out.push(last / debias);
  }
  return { out, last, count };
}

/**
 * Smoothing that extends as points are appended, recomputing only when the weight, the
 * array or its generation (bumped when a resumed attempt cuts the series) changed.
 */
export function makeSmoother() {
  let cache = null;
  let key = null;
  return (ys, w, generation = 0) => {
    const same = key && key.w === w && key.ys === ys && key.generation === generation;
    if (!same || !cache || cache.out.length > ys.length) {
      cache = smooth(ys, w);
    } else if (cache.out.length < ys.length) {
      cache = smooth(ys, w, cache.out.length, cache);
    }
    key = { w, ys, generation };
    return cache.out;
  };
}

/**
 * Several (xs, ys) series on one sorted x axis, nulls where a series has no point (what
 * uPlot needs to overlay runs logged at different iterations).
 */
export function joinSeries(list) {
  const all = new Set();
  for (const [xs] of list) for (const x of xs) all.add(x);
  const xs = [...all].sort((a, b) => a - b);
  const pos = new Map(xs.map((x, i) => [x, i]));
  const yss = list.map(([sx, sy]) => {
    const out = new Array(xs.length).fill(null);
    for (let i = 0; i < sx.length; i++) out[pos.get(sx[i])] = sy[i] ?? null;
    return out;
  });
  return [xs, yss];
}
