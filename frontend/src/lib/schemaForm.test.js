import { describe, it, expect } from 'vitest';
import { buildForm, fieldFrom, leaves, toLogPosition, fromLogPosition, parseFieldValue, plausibility, typesOf, humanize } from './schemaForm.js';

// The shape backend/config/schema.py produces: sections as objects, leaves with
// type/minimum/enum/default/description and an `x-trainboard` widget hint.
const schema = {
  type: 'object',
  properties: {
    SYSTEM: {
      type: 'object',
      properties: {
        NUM_GPUS: { type: 'integer', minimum: 0, default: 4, description: 'GPUs to train on', 'x-trainboard': { widget: 'slider', min: 0, max: 8, step: 1 } },
        NUM_CPUS: { type: 'integer', minimum: 0, default: 4, 'x-trainboard': { widget: 'slider', min: 0, max: 32, step: 1 } },
      },
    },
    SOLVER: {
      type: 'object',
      properties: {
        BASE_LR: { type: 'number', exclusiveMinimum: 0, default: 0.001, description: 'base learning rate', 'x-trainboard': { widget: 'log-slider', min: 1e-5, max: 1 } },
        NAME: { type: 'string', enum: ['SGD', 'Adam', 'AdamW'], default: 'SGD', 'x-trainboard': { widget: 'select' } },
        MOMENTUM: { type: 'number', minimum: 0, maximum: 1, default: 0.9, 'x-trainboard': { widget: 'slider', min: 0, max: 1, step: 0.01 } },
        STEPS: { type: 'array', items: { type: 'integer' }, 'x-trainboard': { widget: 'list' } },
        CLIP_GRADIENTS: {
          type: 'object',
          properties: { ENABLED: { type: 'boolean', default: false, 'x-trainboard': 'toggle' } },
        },
      },
    },
    MODEL: {
      type: 'object',
      properties: {
        MIXED_PRECESION: { type: 'boolean', default: false, 'x-trainboard': { widget: 'toggle' } },
        LABEL_EROSION: { anyOf: [{ type: 'integer' }, { type: 'null' }], minimum: 0 },
      },
    },
  },
};

describe('schema walking', () => {
  it('finds every leaf with its dotted key', () => {
    const keys = leaves(schema).map((l) => l.key);
    expect(keys).toContain('SOLVER.BASE_LR');
    expect(keys).toContain('SOLVER.CLIP_GRADIENTS.ENABLED');
    expect(keys).toContain('MODEL.LABEL_EROSION');
    expect(keys).not.toContain('SOLVER');
  });
  it('reads types through anyOf', () => {
    expect(typesOf({ anyOf: [{ type: 'integer' }, { type: 'null' }] }).sort()).toEqual(['integer', 'null']);
  });
  it('humanizes keys', () => {
    expect(humanize('SOLVER.ITERATION_TOTAL')).toBe('Iteration total');
  });
});

describe('fields from hints', () => {
  it('log slider for the learning rate with the schema limit', () => {
    const f = fieldFrom('SOLVER.BASE_LR', schema.properties.SOLVER.properties.BASE_LR);
    expect(f).toMatchObject({ widget: 'log-slider', min: 1e-5, max: 1, integer: false, label: 'Learning rate', minimum: 0, exclusiveMinimum: true });
    expect(f.help).toBe('base learning rate');
  });
  it('select with the enum as options', () => {
    const f = fieldFrom('SOLVER.NAME', schema.properties.SOLVER.properties.NAME);
    expect(f.widget).toBe('select');
    expect(f.options).toEqual(['SGD', 'Adam', 'AdamW']);
  });
  it('string hints and integer sliders', () => {
    const t = fieldFrom('SOLVER.CLIP_GRADIENTS.ENABLED', schema.properties.SOLVER.properties.CLIP_GRADIENTS.properties.ENABLED);
    expect(t.widget).toBe('toggle');
    const g = fieldFrom('SYSTEM.NUM_GPUS', schema.properties.SYSTEM.properties.NUM_GPUS);
    expect(g).toMatchObject({ widget: 'slider', integer: true, step: 1 });
  });
});

describe('the wizard form', () => {
  it('primary parameters always appear, GPUs capped by the server', () => {
    const form = buildForm(schema, { gpus: 2 });
    const primary = form.primary.flatMap((g) => g.fields);
    const keys = primary.map((f) => f.key);
    expect(keys).toEqual([
      'SOLVER.BASE_LR',
      'SOLVER.NAME',
      'SOLVER.LR_SCHEDULER_NAME',
      'SOLVER.SAMPLES_PER_BATCH',
      'SOLVER.ITERATION_TOTAL',
      'SOLVER.ITERATION_SAVE',
      'SOLVER.ITERATION_VAL',
      'SYSTEM.NUM_GPUS',
      'SYSTEM.NUM_CPUS',
      'MODEL.MIXED_PRECESION',
    ]);
    const gpus = primary.find((f) => f.key === 'SYSTEM.NUM_GPUS');
    expect(gpus).toMatchObject({ widget: 'slider', min: 0, max: 2 });
    // missing from this schema: the built-in hint fills in
    const sched = primary.find((f) => f.key === 'SOLVER.LR_SCHEDULER_NAME');
    expect(sched.widget).toBe('select');
    expect(sched.options).toContain('WarmupCosineLR');
    const total = primary.find((f) => f.key === 'SOLVER.ITERATION_TOTAL');
    expect(total).toMatchObject({ widget: 'log-slider', integer: true });
  });
  it('other hinted keys go under "more", grouped by section; lists and plain keys do not', () => {
    const form = buildForm(schema, { gpus: 0 });
    const more = Object.fromEntries(form.more.map((g) => [g.title, g.fields.map((f) => f.key)]));
    expect(more['SOLVER']).toEqual(['SOLVER.MOMENTUM']);
    expect(more['SOLVER.CLIP_GRADIENTS']).toEqual(['SOLVER.CLIP_GRADIENTS.ENABLED']);
    expect(JSON.stringify(more)).not.toContain('STEPS');
    expect(JSON.stringify(more)).not.toContain('LABEL_EROSION');
  });
  it('an empty schema still gives the primary form', () => {
    const form = buildForm({}, {});
    expect(form.primary.flatMap((g) => g.fields)).toHaveLength(10);
    expect(form.more).toEqual([]);
  });
});

describe('log slider and number parsing', () => {
  it('round trips positions on a log scale', () => {
    expect(toLogPosition(1e-5, 1e-5, 1)).toBe(0);
    expect(toLogPosition(1, 1e-5, 1)).toBe(1000);
    expect(toLogPosition(1e-3, 1e-5, 1)).toBe(400);
    expect(fromLogPosition(400, 1e-5, 1)).toBeCloseTo(1e-3, 10);
    expect(fromLogPosition(0, 1e-5, 1)).toBe(1e-5);
    // integers (iterations) come out whole and inside the range
    const v = fromLogPosition(517, 1, 1e6, true);
    expect(Number.isInteger(v)).toBe(true);
    expect(fromLogPosition(0, 1, 1e6, true)).toBe(1);
  });
  it('checks typed numbers against the schema', () => {
    const lr = fieldFrom('SOLVER.BASE_LR', schema.properties.SOLVER.properties.BASE_LR);
    expect(parseFieldValue(lr, '0.01')).toEqual({ value: 0.01 });
    expect(parseFieldValue(lr, '1e-4')).toEqual({ value: 1e-4 });
    expect(parseFieldValue(lr, '0').error).toMatch(/above 0/);
    expect(parseFieldValue(lr, 'abc').error).toBeTruthy();
    const gpus = fieldFrom('SYSTEM.NUM_GPUS', schema.properties.SYSTEM.properties.NUM_GPUS);
    expect(parseFieldValue(gpus, '1.5').error).toMatch(/whole/);
    const mom = fieldFrom('SOLVER.MOMENTUM', schema.properties.SOLVER.properties.MOMENTUM);
    expect(parseFieldValue(mom, '1.5').error).toMatch(/at most 1/);
  });
  it('warns about legal values far outside the usual range', () => {
    const lr = fieldFrom('SOLVER.BASE_LR', schema.properties.SOLVER.properties.BASE_LR);
    expect(plausibility(lr, 5)).toMatch(/above the usual range/);
    expect(plausibility(lr, 1e6)).toMatch(/above the usual range/);
    expect(plausibility(lr, 0.002)).toBeNull();
    const gpus = fieldFrom('SYSTEM.NUM_GPUS', schema.properties.SYSTEM.properties.NUM_GPUS);
    expect(plausibility(gpus, 0)).toBeNull();
  });
});

describe('gpu count from /api/health', () => {
  it('a list of GPUs or a number', async () => {
    const { gpuCount } = await import('./schemaForm.js');
    expect(gpuCount({ gpus: [{ index: 0 }, { index: 1 }] })).toBe(2);
    expect(gpuCount({ gpus: 3 })).toBe(3);
    expect(gpuCount({})).toBeNull();
    expect(gpuCount(null)).toBeNull();
  });
});
