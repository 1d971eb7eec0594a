import { describe, it, expect } from 'vitest';
import { makeAxis, layout, pathOf, bestSoFar } from './parcoords.js';

describe('axes', () => {
  it('a linear axis spans the space (or the values) from 0 to 1', () => {
    const axis = makeAxis('k', [2, 4], { type: 'float', low: 0, high: 10 });
    expect(axis.kind).toBe('linear');
    expect([axis.pos(0), axis.pos(5), axis.pos(10)]).toEqual([0, 0.5, 1]);
    expect(makeAxis('k', [2, 4]).pos(3)).toBe(0.5);
    expect(axis.pos(null)).toBe(null);
    expect(axis.pos(20)).toBe(1); // clamped
  });
  it('a log axis spaces decades evenly', () => {
    const axis = makeAxis('lr', [], { type: 'float', low: 1e-4, high: 1e-1, log: true });
    expect(axis.kind).toBe('log');
    expect(axis.pos(1e-4)).toBeCloseTo(0);
    expect(axis.pos(1e-3)).toBeCloseTo(1 / 3);
    expect(axis.pos(1e-2)).toBeCloseTo(2 / 3);
    expect(axis.pos(0)).toBe(null);
  });
  it('choices are spread evenly in the space’s order', () => {
    const axis = makeAxis('b', [8, 2], { type: 'choice', choices: [2, 4, 8] });
    expect(axis.kind).toBe('choice');
    expect([axis.pos(2), axis.pos(4), axis.pos(8), axis.pos(16)]).toEqual([0, 0.5, 1, null]);
    expect(axis.ticks.map((t) => t.label)).toEqual(['2', '4', '8']);
    expect(makeAxis('a', ['x', 'y']).kind).toBe('choice');
    expect(makeAxis('a', ['x']).pos('x')).toBe(0.5);
  });
  it('one value only sits in the middle', () => {
    expect(makeAxis('k', [3, 3]).pos(3)).toBe(0.5);
  });
});

describe('layout', () => {
  const axes = [makeAxis('a', [0, 1]), makeAxis('b', [0, 10])];
  it('spreads axes over the width; high values are drawn up', () => {
    const { xs, lines } = layout([{ values: { a: 1, b: 0 } }, { values: { a: 0 } }], axes, { width: 200, height: 100, pad: 10 });
    expect(xs).toEqual([10, 190]);
    expect(lines[0].points).toEqual([[10, 10], [190, 90]]);
    expect(lines[1].points).toEqual([[10, 90], null]);
  });
  it('a path breaks at missing values', () => {
    expect(pathOf([[0, 0], [1, 1], null, [2, 2], [3, 3]])).toBe('M0.0,0.0L1.0,1.0M2.0,2.0L3.0,3.0');
    expect(pathOf([null])).toBe('');
  });
});

describe('best so far', () => {
  const trials = [
    { number: 2, value: 0.4 },
    { number: 0, value: 0.3 },
    { number: 1, value: null },
    { number: 3, value: 0.35 },
  ];
  it('maximising', () => expect(bestSoFar(trials)).toEqual({ number: [0, 2, 3], best: [0.3, 0.4, 0.4] }));
  it('minimising', () => expect(bestSoFar(trials, 'minimize')).toEqual({ number: [0, 2, 3], best: [0.3, 0.3, 0.3] }));
});
