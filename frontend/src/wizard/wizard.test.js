import { describe, it, expect, beforeEach, vi } from 'vitest';
import { Wizard, initialMark } from './wizard.svelte.js';

class MemoryStorage {
  data = new Map();
  getItem(k) {
    return this.data.has(k) ? this.data.get(k) : null;
  }
  setItem(k, v) {
    this.data.set(k, String(v));
  }
  removeItem(k) {
    this.data.delete(k);
  }
}

const demo2d = { name: 'demo_2d', title: 'Demo 2D U-Net', yaml: 'DATASET:\n  INPUT_PATH: /data/demo\n  IMAGE_NAME: train_image.tif\n  OUTPUT_PATH: /data/demo/outputs/demo_2d\nSOLVER:\n  BASE_LR: 0.002\n' };
const demo3d = { name: 'demo_3d', title: 'Demo 3D U-Net', yaml: 'DATASET:\n  INPUT_PATH: /data/demo\n  OUTPUT_PATH: /data/demo/outputs/demo_3d\nSOLVER:\n  BASE_LR: 0.001\n' };

let calls;
beforeEach(() => {
  vi.useFakeTimers();
  calls = [];
  globalThis.fetch = vi.fn(async (url, init) => {
    const body = JSON.parse(init.body);
    calls.push(body);
    const res = { ok: true, problems: [], values: { SOLVER: { BASE_LR: 0.5 } }, yaml: body.config };
    return { ok: true, status: 200, text: async () => JSON.stringify(res) };
  });
});

describe('the wizard state', () => {
  it('data choices survive a preset change; parameter edits mark it modified; revert keeps data', () => {
    const w = new Wizard(new MemoryStorage());
    w.loadPreset(demo2d);
    expect(w.modified).toBe(false);
    w.setData('DATASET.IMAGE_NAME', 'mine.h5');
    expect(w.configYaml).toContain('IMAGE_NAME: mine.h5');
    expect(w.modified).toBe(false); // data is not a modification of the preset
    w.setParam('SOLVER.BASE_LR', 0.01, 'float');
    expect(w.modified).toBe(true);
    expect(w.value('SOLVER.BASE_LR')).toBe(0.01);
    w.revert();
    expect(w.configYaml).toContain('BASE_LR: 0.002');
    expect(w.configYaml).toContain('IMAGE_NAME: mine.h5');
    w.loadPreset(demo3d);
    expect(w.configYaml).toContain('IMAGE_NAME: mine.h5');
    expect(w.configYaml).toContain('BASE_LR: 0.001');
  });

  it('validates debounced, with base and overrides, and discards stale answers', async () => {
    const w = new Wizard(new MemoryStorage());
    w.loadPreset(demo2d);
    w.setParam('SOLVER.BASE_LR', 0.01);
    w.setParam('SOLVER.BASE_LR', 0.02);
    await vi.advanceTimersByTimeAsync(350);
    expect(calls).toHaveLength(1);
    expect(calls[0].config).toContain('BASE_LR: 0.02');
    expect(w.fresh).toBe(true);
    expect(w.value('SOLVER.BASE_LR')).toBe(0.5); // the server's word once it answered
  });

  it('an overlay is validated over its base', async () => {
    const w = new Wizard(new MemoryStorage());
    w.loadPreset(demo2d);
    w.loadUpload('overlay.yaml', 'SOLVER:\n  BASE_LR: 0.1\n', { overlay: true });
    expect(w.baseYaml).toBe(demo2d.yaml);
    expect(w.sourceLabel).toBe('overlay.yaml over Demo 2D U-Net');
    await vi.advanceTimersByTimeAsync(350);
    expect(calls.at(-1)).toMatchObject({ config: 'SOLVER:\n  BASE_LR: 0.1\n', base: demo2d.yaml });
    expect(w.runBody()).toMatchObject({ config: 'SOLVER:\n  BASE_LR: 0.1\n', base: demo2d.yaml });
    w.removeOverlay();
    expect(w.baseYaml).toBeNull();
    expect(w.configYaml).toBe(demo2d.yaml);
  });

  it('a key the text cannot take (a scalar where a section is) becomes a KEY VALUE override', () => {
    const w = new Wizard(new MemoryStorage());
    w.loadUpload('odd.yaml', 'SOLVER: odd\n');
    w.setParam('SOLVER.BASE_LR', 0.2, 'float');
    expect(w.configYaml).toBe('SOLVER: odd\n');
    expect(w.overrides).toEqual(['SOLVER.BASE_LR', '0.2']);
    w.setParam('SOLVER.BASE_LR', 0.3, 'float');
    expect(w.overrides).toEqual(['SOLVER.BASE_LR', '0.3']);
  });

  it('survives a reload', () => {
    const storage = new MemoryStorage();
    const w = new Wizard(storage);
    w.loadPreset(demo2d);
    w.setParam('SOLVER.BASE_LR', 0.03);
    w.goto(4);
    w.setField('name', 'my run');
    const again = new Wizard(storage);
    expect(again.step).toBe(4);
    expect(again.name).toBe('my run');
    expect(again.configYaml).toContain('BASE_LR: 0.03');
    expect(again.modified).toBe(true);
  });

  it('"fix and retry" loads the run as it was given', () => {
    const w = new Wizard(new MemoryStorage());
    w.loadFromRun('abc', { name: 'demo', source: { config: 'A:\n  B: 1\n', base: 'X:\n  Y: 2\n', overrides: ['A.B', '3'] }, log_path: '/l', seed: 7 }, { state: 'Error', error: { message: 'NaN' } });
    expect(w.step).toBe(4);
    expect(w.name).toBe('demo (retry)');
    // The log folder is the new run's own (the default), not the old run's.
    expect(w.runBody()).toEqual({ name: 'demo (retry)', config: 'A:\n  B: 1\n', base: 'X:\n  Y: 2\n', overrides: ['A.B', '3'], seed: 7 });
    expect(w.retryOf.error.message).toBe('NaN');
  });

  it('a key the overrides set is changed in the overrides, which win over the text', () => {
    const w = new Wizard(new MemoryStorage());
    w.loadFromRun('r1', { name: 'old', source: { config: demo2d.yaml, base: null, overrides: ['DATASET.OUTPUT_PATH', '/out/old'] } }, null);
    w.setData('DATASET.OUTPUT_PATH', '/out/fresh');
    expect(w.overrides).toEqual(['DATASET.OUTPUT_PATH', '/out/fresh']);
    expect(w.runBody().overrides).toEqual(['DATASET.OUTPUT_PATH', '/out/fresh']);
  });

  it('a loaded file never mixes its data with the chosen data: mine as a whole, or the file\'s', async () => {
    const w = new Wizard(new MemoryStorage());
    w.loadPreset(demo2d);
    w.validated = { ok: true, problems: [], values: { DATASET: { INPUT_PATH: '/data/demo', IMAGE_NAME: 'train_image.tif' } } };
    w.setData('DATASET.LABEL_NAME', 'cells.tif');
    const file = 'DATASET:\n  INPUT_PATH: /other\n  IMAGE_NAME: a.tif\n  LABEL_NAME: b.tif\n';
    const fileValues = { DATASET: { INPUT_PATH: '/other', IMAGE_NAME: 'a.tif', LABEL_NAME: 'b.tif' } };
    expect(w.dataConflicts(file, fileValues).map((c) => c.key)).toEqual(['DATASET.INPUT_PATH', 'DATASET.IMAGE_NAME', 'DATASET.LABEL_NAME']);
    w.loadUpload('f.yaml', file, { data: 'mine' });
    expect(w.configYaml).toContain('INPUT_PATH: /data/demo'); // the name kept its folder
    expect(w.configYaml).toContain('IMAGE_NAME: train_image.tif');
    expect(w.configYaml).toContain('LABEL_NAME: cells.tif');
    w.loadUpload('f.yaml', file, { data: 'file' });
    expect(w.configYaml).toBe(file);
  });
});

describe('sweep marks', () => {
  const lr = { key: 'SOLVER.BASE_LR', widget: 'log-slider', min: 1e-5, max: 1, integer: false };
  const batch = { key: 'SOLVER.SAMPLES_PER_BATCH', widget: 'slider', min: 1, max: 32, integer: true };
  const arch = { key: 'MODEL.ARCHITECTURE', widget: 'select', options: ['unet_3d', 'fpn_3d'] };
  const amp = { key: 'MODEL.MIXED_PRECESION', widget: 'toggle' };

  it.each([
    [lr, 0.002, { type: 'float', low: 0.0002, high: 0.02, log: true }],
    [lr, 0.5, { type: 'float', low: 0.05, high: 1, log: true }], // clamped to the control
    [batch, 4, { type: 'int', low: 1, high: 32, log: false }],
    [arch, 'unet_3d', { type: 'choice', choices: ['unet_3d', 'fpn_3d'] }],
    [amp, false, { type: 'choice', choices: [true, false] }],
  ])('%o at %s starts as %o', (field, value, mark) => {
    expect(initialMark(field, value)).toEqual(mark);
  });

  it('marks persist, and the sweep body carries the config, the space and the settings', () => {
    const storage = new MemoryStorage();
    const w = new Wizard(storage);
    w.loadPreset(demo2d);
    w.markSweep(batch, true);
    w.setSweepMark(batch.key, { low: 2, high: 8 });
    w.setSweepSetting('trials', 3);
    w.setField('name', 'lr-search');
    expect(w.sweeping).toBe(true);
    const again = new Wizard(storage);
    expect(again.sweepMarks).toEqual({ [batch.key]: { type: 'int', low: 2, high: 8, log: false } });
    const body = again.sweepBody({ K: { type: 'int', low: 2, high: 8 } });
    expect(body).toMatchObject({ name: 'lr-search', config: demo2d.yaml, trials: 3, parallel: 1, sampler: 'tpe', pruner: 'median', objective: 'max_dice', space: { K: { type: 'int', low: 2, high: 8 } } });
    again.markSweep(batch, false);
    expect(again.sweeping).toBe(false);
  });

  it('loading a run starts without marks', () => {
    const w = new Wizard(new MemoryStorage());
    w.loadPreset(demo2d);
    w.markSweep(arch, true);
    w.loadFromRun('r1', { name: 'trial', config: 'SOLVER:\n  BASE_LR: 0.01\n', source: { config: 'SOLVER:\n  BASE_LR: 0.01\n' } }, {});
    expect(w.sweepMarks).toEqual({});
  });
});
