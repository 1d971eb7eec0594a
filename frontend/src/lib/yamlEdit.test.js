import { describe, it, expect } from 'vitest';
import { setKey, formatValue, formatFloat, applyEdits, getPath, newlineIndent } from './yamlEdit.js';

const doc = `# Demo config
SYSTEM:
  NUM_GPUS: 0   # CPU
  NUM_CPUS: 1
MODEL:
  ARCHITECTURE: unet_2d
  FILTERS:
    - 16
    - 32
AUGMENTOR:
  FLIP:
    ENABLED: True
    P: 1.0
  ROTATE: True
SOLVER:
  BASE_LR: 0.002
  ITERATION_TOTAL: 400
`;

describe('formatting values as PyYAML reads them back', () => {
  it('floats keep a dot in the mantissa', () => {
    expect(formatFloat(1e-5)).toBe('0.00001');
    expect(formatFloat(1e-7)).toBe('1.0e-7');
    expect(formatFloat(2.5e-7)).toBe('2.5e-7');
    expect(formatFloat(0.001)).toBe('0.001');
    expect(formatValue(1, 'float')).toBe('1.0');
    expect(formatValue(400)).toBe('400');
  });
  it('booleans, null, lists and strings', () => {
    expect(formatValue(true)).toBe('True');
    expect(formatValue(null)).toBe('null');
    expect(formatValue([8, 128, 128])).toBe('[8, 128, 128]');
    expect(formatValue('/data/demo')).toBe('/data/demo');
    expect(formatValue('train_image.tif')).toBe('train_image.tif');
    expect(formatValue('True')).toBe("'True'");
    expect(formatValue('1e5')).toBe("'1e5'");
    expect(formatValue('a: b')).toBe("'a: b'");
    expect(formatValue("it's")).toBe("'it''s'");
    expect(formatValue('')).toBe("''");
  });
});

describe('setKey keeps the rest of the file byte for byte', () => {
  it('replaces a value and keeps its comment', () => {
    const out = setKey(doc, 'SYSTEM.NUM_GPUS', 1);
    expect(out).toBe(doc.replace('NUM_GPUS: 0   # CPU', 'NUM_GPUS: 1   # CPU'));
  });
  it('replaces a block list with a flow list', () => {
    const out = setKey(doc, 'MODEL.FILTERS', [8, 16, 32]);
    expect(out).toContain('  FILTERS: [8, 16, 32]\nAUGMENTOR:');
    expect(out).not.toContain('- 16');
  });
  it('inserts a missing key at the end of its section', () => {
    const out = setKey(doc, 'SOLVER.SAMPLES_PER_BATCH', 8);
    expect(out.endsWith('  ITERATION_TOTAL: 400\n  SAMPLES_PER_BATCH: 8\n')).toBe(true);
  });
  it('inserts into a section in the middle of the file', () => {
    const out = setKey(doc, 'SYSTEM.DEBUG', false);
    expect(out).toContain('  NUM_CPUS: 1\n  DEBUG: False\nMODEL:');
  });
  it('appends a missing section', () => {
    const out = setKey(doc, 'DATASET.OUTPUT_PATH', '/tmp/out');
    expect(out.endsWith('  ITERATION_TOTAL: 400\nDATASET:\n  OUTPUT_PATH: /tmp/out\n')).toBe(true);
  });
  it('three levels deep', () => {
    expect(setKey(doc, 'AUGMENTOR.FLIP.P', 0.5)).toContain('    ENABLED: True\n    P: 0.5\n  ROTATE: True');
    expect(setKey(doc, 'SOLVER.CLIP_GRADIENTS.ENABLED', true)).toContain('  ITERATION_TOTAL: 400\n  CLIP_GRADIENTS:\n    ENABLED: True\n');
  });
  it('a bare boolean section becomes ENABLED, as PyTC reads it', () => {
    expect(setKey(doc, 'AUGMENTOR.ROTATE.P', 0.5)).toContain('  ROTATE:\n    ENABLED: True\n    P: 0.5\nSOLVER:');
  });
  it('a flow-style section is rewritten in block style, even across lines', () => {
    const flow = 'SYSTEM: {NUM_GPUS: 0, NUM_CPUS: 1}\nSOLVER: {NAME: Adam, STEPS: [1, 2], BASE_LR: 0.002,\n  SAMPLES_PER_BATCH: 8}\nMONITOR:\n  ITERATION_NUM: [10, 50]\n';
    expect(setKey(flow, 'SOLVER.BASE_LR', 0.01)).toBe(
      'SYSTEM: {NUM_GPUS: 0, NUM_CPUS: 1}\nSOLVER:\n  NAME: Adam\n  STEPS: [1, 2]\n  BASE_LR: 0.01\n  SAMPLES_PER_BATCH: 8\nMONITOR:\n  ITERATION_NUM: [10, 50]\n',
    );
    expect(setKey(flow, 'SYSTEM.DEBUG', true)).toContain('SYSTEM:\n  NUM_GPUS: 0\n  NUM_CPUS: 1\n  DEBUG: True\nSOLVER: {');
    const aug = 'AUGMENTOR:\n  FLIP: {ENABLED: true, P: 1.0}\n';
    expect(setKey(aug, 'AUGMENTOR.FLIP.P', 0.5)).toBe('AUGMENTOR:\n  FLIP:\n    ENABLED: true\n    P: 0.5\n');
  });
  it('keeps an anchor that an alias refers to', () => {
    const t = 'MODEL:\n  INPUT_SIZE: &id001 [1, 128, 128]\n  OUTPUT_SIZE: *id001\n';
    expect(setKey(t, 'MODEL.INPUT_SIZE', [1, 64, 64])).toBe('MODEL:\n  INPUT_SIZE: &id001 [1, 64, 64]\n  OUTPUT_SIZE: *id001\n');
  });
  it('gives up on what it cannot rewrite safely', () => {
    expect(setKey('SOLVER: {BASE_LR: 0.1  # comment\n}\n', 'SOLVER.BASE_LR', 0.2)).toBeNull();
    expect(setKey('SOLVER: something\n', 'SOLVER.BASE_LR', 0.2)).toBeNull();
  });
  it('does not confuse a key with a longer one or a nested one of the same name', () => {
    const text = 'SOLVER:\n  NAME_X: 1\n  SWA:\n    NAME: z\n  NAME: SGD\n';
    expect(setKey(text, 'SOLVER.NAME', 'Adam')).toBe('SOLVER:\n  NAME_X: 1\n  SWA:\n    NAME: z\n  NAME: Adam\n');
  });
  it('an empty file', () => {
    expect(setKey('', 'SOLVER.BASE_LR', 0.1)).toBe('SOLVER:\n  BASE_LR: 0.1\n');
  });
  it('keeps CRLF line endings', () => {
    const crlf = 'SOLVER:\r\n  BASE_LR: 0.1\r\n';
    expect(setKey(crlf, 'SOLVER.BASE_LR', 0.2)).toBe('SOLVER:\r\n  BASE_LR: 0.2\r\n');
  });
  it('applyEdits falls back to overrides for what it cannot write', () => {
    const { text, overrides } = applyEdits(doc + 'INFERENCE: odd\n', { 'SOLVER.BASE_LR': 0.01, 'INFERENCE.STRIDE': [1, 2, 3] });
    expect(text).toContain('BASE_LR: 0.01');
    expect(overrides).toEqual(['INFERENCE.STRIDE', '[1, 2, 3]']);
  });
  it('getPath reads resolved values', () => {
    expect(getPath({ A: { B: { C: 3 } } }, 'A.B.C')).toBe(3);
    expect(getPath({ A: {} }, 'A.B.C')).toBeUndefined();
  });
});

describe('Enter in the editor', () => {
  it.each([
    ['SOLVER:\n  BASE_LR: 0.01', '  '],
    ['SOLVER:', '  '],
    ['SOLVER:\n  LR: 1  # a: comment', '  '],
    ['MODEL:\n  FILTERS:', '    '],
    ['MODEL:\n  FILTERS:  # widths', '    '],
    ['NAME: x', ''],
    ['', ''],
  ])('after %j the new line is indented %j', (before, indent) => {
    expect(newlineIndent(before)).toBe(indent);
  });
});
