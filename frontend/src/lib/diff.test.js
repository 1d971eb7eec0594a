import { describe, it, expect } from 'vitest';
import { diffLines, hunks, diffStats, flatten, diffValues } from './diff.js';

const preset = `SYSTEM:
  NUM_GPUS: 0
  NUM_CPUS: 1
SOLVER:
  NAME: Adam
  BASE_LR: 0.002
  ITERATION_TOTAL: 400
`;

describe('line diff', () => {
  it('identical texts have no changes', () => {
    const rows = diffLines(preset, preset);
    expect(diffStats(rows)).toEqual({ added: 0, removed: 0 });
    expect(rows.every((r) => r.op === ' ')).toBe(true);
  });

  it('a changed value is one line removed and one added, with line numbers', () => {
    const edited = preset.replace('BASE_LR: 0.002', 'BASE_LR: 0.01');
    const rows = diffLines(preset, edited);
    expect(diffStats(rows)).toEqual({ added: 1, removed: 1 });
    const del = rows.find((r) => r.op === '-');
    const add = rows.find((r) => r.op === '+');
    expect(del).toMatchObject({ text: '  BASE_LR: 0.002', a: 6, b: null });
    expect(add).toMatchObject({ text: '  BASE_LR: 0.01', a: null, b: 6 });
  });

  it('inserted and removed lines', () => {
    const edited = preset.replace('  NUM_CPUS: 1\n', '').replace('  NAME: Adam\n', '  NAME: Adam\n  MOMENTUM: 0.9\n');
    const rows = diffLines(preset, edited);
    expect(diffStats(rows)).toEqual({ added: 1, removed: 1 });
    expect(rows.filter((r) => r.op === ' ').length).toBe(6);
  });

  it('hunks keep context and count what they skip', () => {
    const long = Array.from({ length: 40 }, (_, i) => `K${i}: ${i}`).join('\n');
    const edited = long.replace('K20: 20', 'K20: 99');
    const shown = hunks(diffLines(long, edited), 2);
    expect(shown[0]).toEqual({ op: '…', count: 18 });
    expect(shown.filter((r) => r.op === ' ')).toHaveLength(4);
    expect(shown[shown.length - 1]).toEqual({ op: '…', count: 17 });
  });

  it('empty sides', () => {
    expect(diffStats(diffLines('', 'a\nb\n'))).toEqual({ added: 2, removed: 0 });
    expect(diffStats(diffLines('a\n', ''))).toEqual({ added: 0, removed: 1 });
  });
});

describe('config value diff', () => {
  it('flattens sections to dotted keys, lists stay values', () => {
    expect(flatten({ A: { B: 1, C: { D: [1, 2] } } })).toEqual({ 'A.B': 1, 'A.C.D': [1, 2] });
  });
  it('lists keys that differ, including ones only one side has', () => {
    const a = { SOLVER: { BASE_LR: 0.002, NAME: 'Adam', STEPS: [1, 2] }, MODEL: { FILTERS: [16, 32] } };
    const b = { SOLVER: { BASE_LR: 0.01, NAME: 'Adam', STEPS: [1, 3] }, MODEL: { FILTERS: [16, 32], EXTRA: true } };
    expect(diffValues(a, b)).toEqual([
      { key: 'MODEL.EXTRA', a: undefined, b: true },
      { key: 'SOLVER.BASE_LR', a: 0.002, b: 0.01 },
      { key: 'SOLVER.STEPS', a: [1, 2], b: [1, 3] },
    ]);
  });
});
