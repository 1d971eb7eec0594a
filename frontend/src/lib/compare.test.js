import { describe, it, expect } from 'vitest';
import { runIds, curve, overlay, differingKeys, colorOf, MAX_RUNS } from './compare.js';

// [x_first, x_last, x_min, y_min, x_max, y_max, n, v_first, v_last, t_last]
const B = [
  [1, 10, 10, 0.1, 1, 0.9, 10, 1, 10, 1000],
  [11, 20, 11, 0.05, 20, 0.3, 10, 11, 20, 1010],
  [21, 30, 25, 0.02, 21, 0.2, 10, 21, 30, 1110], // slower: 100 s for 10 iterations
];

describe('runIds', () => {
  it.each([
    [{ runs: ['a', 'b', 'c', 'a'] }, ['a', 'b', 'c']],
    [{ runs: [], a: 'x', b: 'y' }, ['x', 'y']], // the old ?a=&b= links
    [{ a: 'x', b: null }, ['x']],
    [{ runs: Array.from({ length: 40 }, (_, i) => `r${i}`) }, Array.from({ length: MAX_RUNS }, (_, i) => `r${i}`)],
  ])('%j names %j', (route, want) => {
    expect(runIds(route)).toEqual(want);
  });
});

describe('curve', () => {
  it('against iteration: each bucket by its extremes', () => {
    expect(curve(B).map((p) => p[0])).toEqual([1, 10, 11, 20, 21, 25]);
  });
  it('against wall time: seconds since the first point, interpolated in each bucket', () => {
    const pts = curve(B, 'time');
    expect(pts.map((p) => Math.round(p[0]))).toEqual([0, 0, 1, 10, 20, 60]);
    expect(pts.map((p) => p[1])).toEqual(curve(B).map((p) => p[1])); // same values
  });
  it('an empty series is no points', () => {
    expect(curve([], 'time')).toEqual([]);
    expect(curve(undefined)).toEqual([]);
  });
});

describe('overlay', () => {
  it('puts many runs on one x axis, null where a run has no point', () => {
    const [xs, yss] = overlay([
      [
        [1, 0.5],
        [3, 0.4],
      ],
      [[2, 0.9]],
      [],
    ]);
    expect(xs).toEqual([1, 2, 3]);
    expect(yss).toEqual([
      [0.5, null, 0.4],
      [null, 0.9, null],
      [null, null, null],
    ]);
  });
});

describe('differingKeys', () => {
  it('keeps the keys not equal in every run, one value per run', () => {
    const base = { SOLVER: { BASE_LR: 0.01, ITERATION_TOTAL: 100 }, MODEL: { ARCHITECTURE: 'unet_3d', FILTERS: [8, 16] } };
    const lr = { ...base, SOLVER: { ...base.SOLVER, BASE_LR: 0.1 } };
    const filters = { ...base, MODEL: { ...base.MODEL, FILTERS: [16, 32] } };
    const rows = differingKeys([base, lr, filters, base, null]);
    expect(rows).toEqual([
      { key: 'MODEL.FILTERS', values: [[8, 16], [8, 16], [16, 32], [8, 16], undefined] },
      { key: 'SOLVER.BASE_LR', values: [0.01, 0.1, 0.01, 0.01, undefined] },
    ]);
  });
  it('identical configs differ nowhere', () => {
    expect(differingKeys([{ A: 1 }, { A: 1 }, { A: 1 }])).toEqual([]);
  });
  it('a key only some runs have differs', () => {
    expect(differingKeys([{ A: 1 }, { A: 1, B: 2 }])).toEqual([{ key: 'B', values: [undefined, 2] }]);
  });
});

it('gives eight runs eight colours', () => {
  expect(new Set(Array.from({ length: 8 }, (_, i) => colorOf(i))).size).toBe(8);
});
