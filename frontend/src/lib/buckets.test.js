import { describe, it, expect } from 'vitest';
import { extremes, until, columns } from './buckets.js';

// [x_first, x_last, x_min, y_min, x_max, y_max, n, v_first, v_last]
const B = [
  [1, 4, 3, 0.1, 1, 0.9, 4, 10, 13],
  [5, 8, 5, 0.2, 8, 0.5, 4, 14, 20],
  [9, 9, 9, 0.3, 9, 0.3, 1, 25, 25],
];

describe('buckets', () => {
  it('draws each bucket by its extremes, in x order', () => {
    expect(extremes(B)).toEqual([
      [1, 0.9],
      [3, 0.1],
      [5, 0.2],
      [8, 0.5],
      [9, 0.3],
    ]);
  });

  it.each([
    [9, 0],
    [13, 1],
    [24, 2],
    [25, 3],
  ])('as of version %d, the first %d buckets are complete', (version, n) => {
    expect(until(B, version)).toEqual(B.slice(0, n));
  });

  it('joins several series on x, holding values between their own points', () => {
    const out = columns({ a: [B[0]], b: [B[2]] });
    expect(out.iteration).toEqual([1, 3, 9]);
    expect(out.a).toEqual([0.9, 0.1, null]);
    expect(out.b).toEqual([null, null, 0.3]);
  });
});
