import { describe, it, expect } from 'vitest';
import { decimateIndices, decimate, pick, smooth, makeSmoother, lowerBound, upperBound, joinSeries } from './decimate.js';

const range = (n) => Array.from({ length: n }, (_, i) => i);

describe('decimation', () => {
  it('keeps everything when it already fits', () => {
    const xs = range(100);
    expect(decimateIndices(xs, xs, -Infinity, Infinity, 100)).toEqual(xs);
  });

  it('100,000 points to a few per pixel, keeping every spike', () => {
    const n = 100_000;
    const xs = range(n);
    const ys = xs.map((i) => Math.sin(i / 500));
    ys[31_337] = 50; // a spike
    ys[77_777] = -50;
    const idx = decimateIndices(xs, ys, -Infinity, Infinity, 800);
    expect(idx.length).toBeLessThanOrEqual(800 * 4);
    expect(idx.length).toBeGreaterThan(800);
    expect(idx).toContain(31_337);
    expect(idx).toContain(77_777);
    expect(idx[0]).toBe(0);
    expect(idx[idx.length - 1]).toBe(n - 1);
    for (let i = 1; i < idx.length; i++) expect(idx[i]).toBeGreaterThan(idx[i - 1]);
  });

  it('a zoomed range keeps detail there and one point beyond each edge', () => {
    const xs = range(100_000);
    const ys = xs.map((i) => i % 7);
    const idx = decimateIndices(xs, ys, 5000, 5100, 800);
    expect(idx[0]).toBe(4999);
    expect(idx[idx.length - 1]).toBe(5101);
    expect(idx.length).toBe(103); // the whole range fits at full detail
  });

  it('null values are skipped for min/max but do not break ordering', () => {
    const xs = range(10_000);
    const ys = xs.map((i) => (i % 3 === 0 ? null : i));
    const [dx, dy] = decimate(xs, [ys], -Infinity, Infinity, 100);
    expect(dx.length).toBe(dy.length);
    expect(Math.max(...dy.filter((v) => v !== null))).toBe(9998);
  });

  it('pick and bounds', () => {
    expect(pick([10, 20, 30], [2, 0])).toEqual([30, 10]);
    expect(lowerBound([1, 2, 2, 3], 2)).toBe(1);
    expect(upperBound([1, 2, 2, 3], 2)).toBe(3);
  });

  it('joins series logged at different x', () => {
    const [xs, [a, b]] = joinSeries([
      [[1, 3], [10, 30]],
      [[2, 3], [20, 31]],
    ]);
    expect(xs).toEqual([1, 2, 3]);
    expect(a).toEqual([10, null, 30]);
    expect(b).toEqual([null, 20, 31]);
  });
});

describe('smoothing', () => {
  it('weight 0 is the raw series; debiased start', () => {
    expect(smooth([1, 2, 3], 0).out).toEqual([1, 2, 3]);
    const s = smooth([5, 5, 5], 0.9).out;
    s.forEach((v) => expect(v).toBeCloseTo(5));
  });

  it('incremental smoothing equals smoothing from scratch', () => {
    const ys = range(1000).map((i) => Math.cos(i));
    const sm = makeSmoother();
    const part = [...sm(ys.slice(0, 400), 0.8)];
    expect(part).toEqual(smooth(ys.slice(0, 400), 0.8).out);
    const arr = ys.slice(0, 400);
    sm(arr, 0.8);
    arr.push(...ys.slice(400));
    expect(sm(arr, 0.8)).toEqual(smooth(ys, 0.8).out);
    // a cut (resumed attempt) bumps the generation: recomputed
    arr.length = 300;
    arr.push(99);
    expect(sm(arr, 0.8, 1)).toEqual(smooth(arr, 0.8).out);
  });
});
