// The wizard's state: one YAML document is the single source of truth. Presets and uploads
// load it, the Data, Outputs and Parameters steps write keys into it (lib/yamlEdit.js keeps
// the rest of the file as it was), the Advanced step edits it directly. The server validates
// it (debounced) and its resolved `values` feed every control. Survives a reload.

import { post } from '../lib/api.js';
import { setKey, formatValue, getPath } from '../lib/yamlEdit.js';
import { suggestedEdit } from '../lib/suggest.js';

const STORAGE_KEY = 'trainboard.wizard.v1';
const VALIDATE_DEBOUNCE_MS = 300;

export const STEPS = [
  { n: 1, id: 'data', title: 'Data' },
  { n: 2, id: 'outputs', title: 'Outputs' },
  { n: 3, id: 'base', title: 'Base config' },
  { n: 4, id: 'params', title: 'Parameters' },
  { n: 5, id: 'advanced', title: 'Advanced' },
  { n: 6, id: 'review', title: 'Review & start' },
];

export const DATA_KEYS = [
  'DATASET.INPUT_PATH',
  'DATASET.IMAGE_NAME',
  'DATASET.LABEL_NAME',
  'DATASET.VAL_IMAGE_NAME',
  'DATASET.VAL_LABEL_NAME',
];
export const OUTPUT_KEYS = ['DATASET.OUTPUT_PATH'];

const PERSISTED = [
  'step',
  'name',
  'sourceKind',
  'sourceLabel',
  'presetName',
  'baseYaml',
  'baseLabel',
  'originalYaml',
  'configYaml',
  'dataEdits',
  'overrides',
  'logPath',
  'seed',
  'browseDir',
  'retryOf',
  'reuseOutput',
  'sweepMarks',
  'sweepSettings',
];

// A sweep's settings beside its search space (POST /api/sweeps).
export const SWEEP_DEFAULTS = { trials: 8, parallel: 1, sampler: 'tpe', pruner: 'median', objective: 'max_dice' };

function emptyState() {
  return {
    step: 1,
    name: '',
    sourceKind: null, // 'preset' | 'upload' | 'run'
    sourceLabel: '',
    presetName: null,
    baseYaml: null, // base + overlay: the base; configYaml is then the overlay
    baseLabel: '',
    originalYaml: '', // the edited document as loaded: "modified" and the diff compare to it
    configYaml: '',
    dataEdits: {}, // keys written by the Data and Outputs steps; kept across preset changes
    overrides: [], // KEY VALUE pairs the text could not take (a flow-style section)
    logPath: '',
    seed: 0,
    browseDir: '',
    retryOf: null, // {runId, name, error} when fixing a failed run
    reuseOutput: false, // the user chose to write into a folder another run owns
    sweepMarks: {}, // key -> {type: float|int|choice, low, high, log, choices}: swept, not set
    sweepSettings: { ...SWEEP_DEFAULTS },
  };
}

export class Wizard {
  step = $state(1);
  name = $state('');
  sourceKind = $state(null);
  sourceLabel = $state('');
  presetName = $state(null);
  baseYaml = $state(null);
  baseLabel = $state('');
  originalYaml = $state('');
  configYaml = $state('');
  dataEdits = $state({});
  overrides = $state([]);
  logPath = $state('');
  seed = $state(0);
  browseDir = $state('');
  retryOf = $state(null);
  reuseOutput = $state(false);
  sweepMarks = $state({});
  sweepSettings = $state({ ...SWEEP_DEFAULTS });

  // validation (not persisted)
  validating = $state(false);
  validated = $state.raw(null); // {ok, problems, values, yaml} for `validatedText`
  validatedText = $state(null);
  validateError = $state(null);
  /** Keys set locally since the last answer, so controls follow the hand at once. */
  recent = $state({});
  /** Values typed in a control that were refused (key -> message): they block Next. */
  localErrors = $state({});
  /** A line the editor should show when it opens ({line, n}); not persisted. */
  jump = $state(null);

  #timer = null;
  #seq = 0;
  #storage;

  constructor(storage = typeof localStorage !== 'undefined' ? localStorage : null) {
    this.#storage = storage;
    this.#restore();
  }

  get hasConfig() {
    return this.configYaml.trim().length > 0 || this.baseYaml !== null;
  }

  /** The document as it would be with only the Data/Outputs edits: what "revert" restores. */
  get pristine() {
    return this.#withEdits(this.originalYaml, this.dataEdits);
  }

  get modified() {
    return this.configYaml !== this.pristine;
  }

  get problems() {
    return this.validated?.problems ?? [];
  }

  get errors() {
    return this.problems.filter((p) => p.level === 'error');
  }

  get warnings() {
    return this.problems.filter((p) => p.level !== 'error');
  }

  /** The YAML syntax error of the last answer ({line, message}), or null when it parses. */
  get parseError() {
    const p = this.errors.find((e) => !e.key && (!e.file || e.file === 'config'));
    return p ? { line: p.line ?? null, message: p.message } : null;
  }

  /** A control refused what was typed (message) or accepted it again (null). */
  setLocalError(key, message) {
    const next = { ...this.localErrors };
    if (message) next[key] = message;
    else delete next[key];
    this.localErrors = next;
  }

  /** Open the editor at a line (a "fix" link). */
  showLine(line) {
    this.jump = line ? { line, n: (this.jump?.n ?? 0) + 1 } : null;
  }

  /** Whether the last answer is about the text as it is now. */
  get fresh() {
    return this.validatedText === this.#fingerprint() && !this.validating;
  }

  /** The resolved value of a dotted key: a local edit first, then the server's answer. */
  value(key) {
    if (key in this.recent) return this.recent[key];
    return getPath(this.validated?.values, key);
  }

  // ---------------------------------------------------------------- loading

  loadPreset(preset) {
    this.presetName = preset.name;
    this.sourceKind = 'preset';
    this.sourceLabel = preset.title || preset.name;
    this.#loadDocument(preset.yaml, null, '');
  }

  /**
   * An uploaded YAML: the whole config, or an overlay over the current base. `data` says
   * whose data selection wins when the file names its own volumes: 'mine' keeps the whole
   * selection (folder and names together), 'file' drops it; never a mix of the two.
   */
  loadUpload(fileName, text, { overlay = false, data = 'mine' } = {}) {
    this.#chooseData(data);
    if (overlay) {
      const base = this.baseYaml ?? this.originalYaml;
      const baseLabel = this.baseYaml !== null ? this.baseLabel : this.sourceLabel;
      this.sourceKind = 'upload';
      this.sourceLabel = `${fileName} over ${baseLabel}`;
      this.#loadDocument(text, base, baseLabel);
    } else {
      this.presetName = null;
      this.sourceKind = 'upload';
      this.sourceLabel = fileName;
      this.#loadDocument(text, null, '');
    }
  }

  /** The data keys whose chosen value differs from what `fileValues` (resolved) holds. */
  dataConflicts(text, fileValues) {
    if (!DATA_KEYS.some((k) => k in this.dataEdits)) return [];
    return DATA_KEYS.filter((key) => {
      const leaf = key.split('.').pop();
      if (!new RegExp(`(^|[\\s{,])${leaf}\\s*:`, 'm').test(text)) return false;
      const file = getPath(fileValues, key);
      return file !== undefined && String(file ?? '') !== String(this.value(key) ?? '');
    }).map((key) => ({ key, mine: this.value(key), file: getPath(fileValues, key) }));
  }

  #chooseData(data) {
    const edits = { ...this.dataEdits };
    if (data === 'file') {
      for (const k of DATA_KEYS) delete edits[k];
    } else if (DATA_KEYS.some((k) => k in edits)) {
      // The selection as a whole: a name chosen in step 1 keeps its folder.
      for (const k of DATA_KEYS) {
        const v = this.value(k);
        if (v !== undefined && v !== null && v !== '') edits[k] = v;
      }
    }
    this.dataEdits = edits;
  }

  /** Drop the overlay and edit the base alone again. */
  removeOverlay() {
    if (this.baseYaml === null) return;
    const base = this.baseYaml;
    this.sourceLabel = this.baseLabel;
    this.#loadDocument(base, null, '');
  }

  /** "Fix configuration and retry": this run's config as it was given. */
  loadFromRun(runId, created, summary) {
    const source = created?.source ?? {};
    Object.assign(this, emptyState());
    this.sourceKind = 'run';
    this.sourceLabel = `run ${created?.name || runId}`;
    this.name = retryName(created?.name || runId);
    // The log folder stays the default (one per run): the old run's is its own.
    this.logPath = '';
    this.seed = created?.seed ?? 0;
    this.baseYaml = source.base ?? null;
    this.baseLabel = source.base ? 'base of the run' : '';
    this.originalYaml = source.config ?? created?.config ?? '';
    this.configYaml = this.originalYaml;
    this.overrides = Array.isArray(source.overrides) ? [...source.overrides] : [];
    this.retryOf = {
      runId,
      name: created?.name ?? runId,
      error: summary?.error ?? null,
      state: summary?.state ?? null,
      outputPath: created?.output_path ?? summary?.output_path ?? null,
    };
    this.step = 4;
    this.#changed();
  }

  reset() {
    Object.assign(this, emptyState());
    this.validated = null;
    this.validatedText = null;
    this.recent = {};
    this.localErrors = {};
    this.jump = null;
    this.#storage?.removeItem(STORAGE_KEY);
  }

  #loadDocument(text, base, baseLabel) {
    this.baseYaml = base;
    this.baseLabel = baseLabel;
    this.originalYaml = text;
    this.overrides = [];
    this.configYaml = this.#withEdits(text, this.dataEdits);
    this.#changed();
  }

  #withEdits(text, edits) {
    let out = text;
    for (const [key, value] of Object.entries(edits)) {
      const next = setKey(out, key, value);
      if (next !== null) out = next;
    }
    return out;
  }

  // ---------------------------------------------------------------- editing

  /** Set a parameter in the YAML (a slider moved). */
  setParam(key, value, hint) {
    // A key the overrides already set is changed there: the overrides win over the text.
    const overridden = this.overrides.some((k, j) => j % 2 === 0 && k === key);
    const next = overridden ? null : setKey(this.configYaml, key, value, hint);
    if (next === null) {
      // The file writes this section in flow style: carry it as a KEY VALUE override.
      const ov = [...this.overrides];
      const i = ov.findIndex((k, j) => j % 2 === 0 && k === key);
      const v = formatValue(value, hint);
      if (i >= 0) ov[i + 1] = v;
      else ov.push(key, v);
      this.overrides = ov;
    } else {
      this.configYaml = next;
    }
    this.recent = { ...this.recent, [key]: value };
    this.#changed();
  }

  /** Apply what a problem suggests (lib/suggest.js); false when it names no value. */
  applySuggestion(problem) {
    const edit = suggestedEdit(problem);
    if (!edit) return false;
    if (DATA_KEYS.includes(edit.key) || OUTPUT_KEYS.includes(edit.key)) this.setData(edit.key, edit.value);
    else this.setParam(edit.key, edit.value);
    return true;
  }

  /** Set a data or output key: also remembered across preset changes. */
  setData(key, value) {
    this.dataEdits = { ...this.dataEdits, [key]: value };
    if (key === 'DATASET.OUTPUT_PATH') this.reuseOutput = false;
    this.setParam(key, value);
  }

  setDataMany(edits) {
    for (const [k, v] of Object.entries(edits)) this.setData(k, v);
  }

  /** The Advanced editor's text. */
  setText(text) {
    this.configYaml = text;
    this.recent = {};
    this.#changed();
  }

  revert() {
    this.configYaml = this.pristine;
    this.overrides = [];
    this.recent = {};
    this.#changed();
  }

  setField(field, value) {
    this[field] = value;
    this.#persist();
  }

  goto(step) {
    this.step = Math.min(6, Math.max(1, step));
    this.#persist();
  }

  // ---------------------------------------------------------------- validation

  #fingerprint() {
    return JSON.stringify([this.configYaml, this.baseYaml, this.overrides]);
  }

  #changed() {
    this.#persist();
    this.validateSoon();
  }

  validateSoon(delay = VALIDATE_DEBOUNCE_MS) {
    clearTimeout(this.#timer);
    this.validating = true;
    this.#timer = setTimeout(() => this.validateNow(), delay);
  }

  async validateNow() {
    clearTimeout(this.#timer);
    if (!this.hasConfig) {
      this.validating = false;
      return null;
    }
    const seq = ++this.#seq;
    const text = this.#fingerprint();
    this.validating = true;
    const body = { config: this.configYaml };
    if (this.baseYaml !== null) body.base = this.baseYaml;
    if (this.overrides.length) body.overrides = [...this.overrides];
    try {
      const res = await post('config/validate', body);
      if (seq !== this.#seq) return null; // a newer text is being checked
      this.validated = res;
      this.validatedText = text;
      this.validateError = null;
      this.recent = {};
      return res;
    } catch (e) {
      if (seq !== this.#seq) return null;
      this.validateError = e.message;
      return null;
    } finally {
      if (seq === this.#seq) this.validating = false;
    }
  }

  /** The body of POST /api/runs for this configuration. */
  runBody() {
    const body = { name: this.name.trim() || undefined, config: this.configYaml, seed: Number(this.seed) || 0 };
    if (this.baseYaml !== null) body.base = this.baseYaml;
    if (this.overrides.length) body.overrides = [...this.overrides];
    if (this.logPath.trim()) body.log_path = this.logPath.trim();
    if (this.reuseOutput) body.reuse_output = true;
    return body;
  }

  // ---------------------------------------------------------------- sweeps

  /** Mark a parameter "sweep" (with a range from its control and value) or unmark it. */
  markSweep(field, on) {
    const next = { ...this.sweepMarks };
    if (on) next[field.key] = initialMark(field, this.value(field.key));
    else delete next[field.key];
    this.sweepMarks = next;
    this.#persist();
  }

  setSweepMark(key, patch) {
    if (!this.sweepMarks[key]) return;
    this.sweepMarks = { ...this.sweepMarks, [key]: { ...this.sweepMarks[key], ...patch } };
    this.#persist();
  }

  setSweepSetting(name, value) {
    this.sweepSettings = { ...this.sweepSettings, [name]: value };
    this.#persist();
  }

  get sweeping() {
    return Object.keys(this.sweepMarks).length > 0;
  }

  /** The body of POST /api/sweeps: this configuration as the base, the marks as the space. */
  sweepBody(space) {
    const { name, config, base, overrides, seed } = this.runBody();
    const s = this.sweepSettings;
    const body = { config, space, objective: s.objective, trials: Number(s.trials), parallel: Number(s.parallel), sampler: s.sampler, pruner: s.pruner, seed };
    if (name) body.name = name;
    if (base !== undefined) body.base = base;
    if (overrides) body.overrides = overrides;
    return body;
  }

  // ---------------------------------------------------------------- persistence

  #persist() {
    if (!this.#storage) return;
    const data = {};
    for (const k of PERSISTED) data[k] = $state.snapshot(this[k]);
    try {
      this.#storage.setItem(STORAGE_KEY, JSON.stringify(data));
    } catch {
      /* storage full or disabled: the wizard still works */
    }
  }

  #restore() {
    let data = null;
    try {
      data = JSON.parse(this.#storage?.getItem(STORAGE_KEY) ?? 'null');
    } catch {
      data = null;
    }
    const state = { ...emptyState(), ...(data && typeof data === 'object' ? data : {}) };
    for (const k of PERSISTED) this[k] = state[k];
    if (this.hasConfig) this.validateSoon(0);
  }
}

/** A first range for a parameter marked "sweep": its control's bounds around its value. */
export function initialMark(field, value) {
  if (field.widget === 'toggle') return { type: 'choice', choices: [true, false] };
  if (field.widget === 'select' || field.options?.length) return { type: 'choice', choices: (field.options ?? [value]).slice() };
  const v = typeof value === 'number' ? value : null;
  if (field.widget === 'log-slider') {
    const low = v !== null && v > 0 ? v / 10 : field.min;
    const high = v !== null && v > 0 ? v * 10 : field.max;
    const clamp = (x) => Math.min(field.max ?? x, Math.max(field.min ?? x, x));
    const round = (x) => (field.integer ? Math.round(x) : Number(x.toPrecision(2)));
    return { type: field.integer ? 'int' : 'float', low: round(clamp(low)), high: round(clamp(high)), log: true };
  }
  return { type: field.integer ? 'int' : 'float', low: field.min ?? (v ?? 0), high: field.max ?? (v ?? 1), log: false };
}

function retryName(name) {
  const m = /^(.*) \(retry (\d+)\)$/.exec(name);
  if (m) return `${m[1]} (retry ${Number(m[2]) + 1})`;
  const m1 = /^(.*) \(retry\)$/.exec(name);
  if (m1) return `${m1[1]} (retry 2)`;
  return `${name} (retry)`;
}
