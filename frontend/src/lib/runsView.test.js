import { describe, it, expect } from 'vitest';
import {
  DEFAULT_VIEW,
  parseCondition,
  meets,
  viewFromQuery,
  viewToQuery,
  sortBy,
  visibleRuns,
  tagCounts,
  neededKeys,
  searchKeys,
  sweepOf,
  TAG,
} from './runsView.js';
import { parseHash, href } from './router.svelte.js';

const run = (id, extra = {}) => ({ run_id: id, name: id, state: 'Complete', created_at: 0, tags: [], ...extra });

const RUNS = [
  run('a', { name: 'Alpha', best_dice: 0.5, started_at: 10, iteration: 20, tags: ['baseline'] }),
  run('b', { name: 'beta', best_dice: 0.7, started_at: 30, iteration: 10, tags: ['sweep:sweep-1'], sweep: { id: 'sweep-1', number: 0, params: {} } }),
  run('c', { name: 'Gamma', state: 'Idle', queued: true, started_at: null, created_at: 40 }),
  run('d', { name: 'delta', archived: true, best_dice: 0.9, started_at: 20 }),
  run('e', { name: 'eps', deleted: true }),
];
const PARAMS = {
  a: { 'SOLVER.BASE_LR': 0.01, 'MODEL.ARCHITECTURE': 'unet_plus_3d' },
  b: { 'SOLVER.BASE_LR': 0.001, 'MODEL.ARCHITECTURE': 'unet_3d' },
  c: { 'SOLVER.BASE_LR': 0.1, 'MODEL.ARCHITECTURE': 'unet_3d' },
  d: { 'SOLVER.BASE_LR': 0.05, 'MODEL.ARCHITECTURE': 'fpn_3d' },
};
const ids = (rows) => rows.map((r) => r.run_id);
const view = (q) => viewFromQuery(q);

describe('conditions', () => {
  it.each([
    ['SOLVER.BASE_LR>=0.001', { key: 'SOLVER.BASE_LR', op: '>=', value: '0.001' }],
    ['MODEL.ARCHITECTURE=unet_3d', { key: 'MODEL.ARCHITECTURE', op: '=', value: 'unet_3d' }],
    ['A.B!=x', { key: 'A.B', op: '!=', value: 'x' }],
    ['A.B~unet', { key: 'A.B', op: '~', value: 'unet' }],
    ['A.B<3', { key: 'A.B', op: '<', value: '3' }],
    ['=3', null],
    ['A.B=', null],
    ['not a key=3', null],
  ])('%s', (text, expected) => expect(parseCondition(text)).toEqual(expected));

  it.each([
    [0.01, '>=', '0.001', true],
    [0.0001, '>=', '0.001', false],
    ['4', '=', '4.0', true],
    ['unet_3d', '=', 'UNET_3D', true],
    ['unet_3d', '!=', 'unet_3d', false],
    [null, '=', 'null', true],
    ['abc', '<', '3', false],
    ['unet_plus_3d', '~', 'plus', true],
    [null, '~', 'x', false],
  ])('%s %s %s → %s', (value, op, wanted, expected) => expect(meets(value, { op, value: wanted })).toBe(expected));
});

describe('the view in the URL', () => {
  it('the default view has an empty query', () => {
    expect(viewToQuery(viewFromQuery({}))).toEqual({});
    expect(viewFromQuery({})).toEqual({ ...DEFAULT_VIEW, where: [], cols: [] });
  });

  it('round-trips through the hash route', () => {
    const v = {
      ...DEFAULT_VIEW,
      q: 'al',
      state: 'Complete',
      tag: 'baseline',
      sweep: 'sweep-1',
      where: [parseCondition('SOLVER.BASE_LR>=0.001'), parseCondition('MODEL.ARCHITECTURE~unet')],
      cols: ['SOLVER.BASE_LR', 'MODEL.ARCHITECTURE'],
      sort: 'param:SOLVER.BASE_LR',
      dir: 1,
      archived: true,
    };
    const hash = href('history', { query: viewToQuery(v) });
    const route = parseHash(hash);
    expect(route.name).toBe('history');
    expect(viewFromQuery(route.query)).toEqual(v);
  });

  it('ignores what is not a view', () => {
    const v = viewFromQuery({ cols: 'SOLVER.BASE_LR,<script>', sort: 'param:bad key', where: 'junk;A.B=1' });
    expect(v.cols).toEqual(['SOLVER.BASE_LR']);
    expect(v.sort).toBe('started');
    expect(v.where).toEqual([{ key: 'A.B', op: '=', value: '1' }]);
  });

  it('sorting a column again flips it; a new one starts in its natural direction', () => {
    let v = viewFromQuery({});
    expect([v.sort, v.dir]).toEqual(['started', -1]);
    v = sortBy(v, 'name');
    expect([v.sort, v.dir]).toEqual(['name', 1]);
    v = sortBy(v, 'name');
    expect([v.sort, v.dir]).toEqual(['name', -1]);
    v = sortBy(v, 'dice');
    expect([v.sort, v.dir]).toEqual(['dice', -1]);
  });

  it('needs the values of its columns, conditions and sort key', () => {
    const v = viewFromQuery({ cols: 'B.X', where: 'A.Y>1', sort: 'param:C.Z' });
    expect(neededKeys(v)).toEqual(['A.Y', 'B.X', 'C.Z']);
  });
});

describe('filtering and sorting', () => {
  it('hides archived and deleted runs unless asked; deleted never show', () => {
    expect(ids(visibleRuns(RUNS, view({}), PARAMS)).sort()).toEqual(['a', 'b', 'c']);
    expect(ids(visibleRuns(RUNS, view({ archived: '1' }), PARAMS)).sort()).toEqual(['a', 'b', 'c', 'd']);
  });

  it.each([
    [{ state: 'Queued' }, ['c']],
    [{ state: 'Idle' }, ['c']],
    [{ tag: 'baseline' }, ['a']],
    [{ sweep: 'sweep-1' }, ['b']],
    [{ q: 'GAM' }, ['c']],
    [{ where: 'SOLVER.BASE_LR>=0.01' }, ['a', 'c']],
    [{ where: 'SOLVER.BASE_LR>=0.01;MODEL.ARCHITECTURE=unet_3d' }, ['c']],
    [{ where: 'NO.KEY=1' }, []],
  ])('filter %o', (query, expected) => {
    expect(ids(visibleRuns(RUNS, view(query), PARAMS)).sort()).toEqual(expected);
  });

  it.each([
    [{ sort: 'name', dir: 'asc' }, ['a', 'b', 'c']],
    [{ sort: 'dice', dir: 'desc' }, ['b', 'a', 'c']], // no Dice last
    [{ sort: 'dice', dir: 'asc' }, ['a', 'b', 'c']], // no Dice last either way
    [{ sort: 'param:SOLVER.BASE_LR', dir: 'asc' }, ['b', 'a', 'c']],
    [{ sort: 'param:MODEL.ARCHITECTURE', dir: 'desc' }, ['a', 'c', 'b']], // ties: newest first
    [{ sort: 'state', dir: 'asc' }, ['a', 'b', 'c']], // Complete < Queued
    [{ sort: 'iterations', dir: 'desc' }, ['a', 'b', 'c']],
  ])('sort %o', (query, expected) => {
    expect(ids(visibleRuns(RUNS, view(query), PARAMS))).toEqual(expected);
  });
});

describe('tags, sweeps and the key picker', () => {
  it('counts tags, most used first', () => {
    expect(tagCounts([run('x', { tags: ['a', 'b'] }), run('y', { tags: ['b'] })])).toEqual([['b', 2], ['a', 1]]);
  });
  it('finds a trial’s sweep from its summary or its tag', () => {
    expect(sweepOf(run('x', { sweep: { id: 'sweep-9' } }))).toBe('sweep-9');
    expect(sweepOf(run('x', { tags: ['sweep:sweep-8'] }))).toBe('sweep-8');
    expect(sweepOf(run('x'))).toBe(null);
  });
  it('searches keys by every word, in the key or its description', () => {
    const keys = [
      { key: 'SOLVER.BASE_LR', description: 'learning rate' },
      { key: 'SOLVER.ITERATION_TOTAL', description: 'iterations' },
      { key: 'MODEL.ARCHITECTURE', description: '' },
    ];
    expect(searchKeys(keys, 'solver learning').map((k) => k.key)).toEqual(['SOLVER.BASE_LR']);
    expect(searchKeys(keys, 'arch').map((k) => k.key)).toEqual(['MODEL.ARCHITECTURE']);
    expect(searchKeys(keys, '').length).toBe(3);
  });
  it.each([['baseline', true], ['sweep:sweep-1', true], ['a b', false], ['', false], ['x'.repeat(65), false], ['ü', false]])(
    'tag %s valid: %s',
    (t, ok) => expect(TAG.test(t)).toBe(ok),
  );
});
