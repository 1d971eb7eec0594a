import { describe, it, expect } from 'vitest';
import { parseScalar, suggestedEdit } from './suggest.js';

describe('suggestions that can be applied', () => {
  it.each([
    [{ key: 'SYSTEM.NUM_GPUS', suggestion: 'NUM_GPUS: 0' }, { key: 'SYSTEM.NUM_GPUS', value: 0 }],
    [{ key: 'SOLVER.BASE_LR', suggestion: 'the default is 0.001' }, { key: 'SOLVER.BASE_LR', value: 0.001 }],
    [{ key: 'DATASET.IMAGE_NAME', suggestion: 'IMAGE_NAME: train_image.h5' }, { key: 'DATASET.IMAGE_NAME', value: 'train_image.h5' }],
    [{ key: 'MODEL.INPUT_SIZE', suggestion: 'INPUT_SIZE: [1, 64, 64]' }, { key: 'MODEL.INPUT_SIZE', value: [1, 64, 64] }],
    [{ key: 'SOLVER.BASE_LR', suggested: 0.0002, suggestion: 'lower it' }, { key: 'SOLVER.BASE_LR', value: 0.0002 }],
  ])('%j applies as %j', (problem, edit) => {
    expect(suggestedEdit(problem)).toEqual(edit);
  });

  it.each([
    { key: 'DATASET.INPUT_PATH', suggestion: 'set DATASET.INPUT_PATH to your data folder' },
    { key: '', suggestion: 'NAME: Adam' },
    { key: 'SOLVER.NAME', suggestion: 'NAME: {a: 1}' },
    { key: 'SOLVER.NAME' },
  ])('%j is advice, not a button', (problem) => {
    expect(suggestedEdit(problem)).toBeNull();
  });

  it('reads plain scalars only', () => {
    expect(parseScalar('1e-4')).toBe(1e-4);
    expect(parseScalar('True')).toBe(true);
    expect(parseScalar("'a b'")).toBe('a b');
    expect(parseScalar('two words')).toBeUndefined();
  });
});
