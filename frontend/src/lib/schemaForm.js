// From the config JSON Schema (GET /api/config/schema) to form fields: each leaf key with an
// `x-trainboard` widget hint (slider, log-slider, select, toggle, number) becomes a control.
// The schema is the authority on ranges, choices and help; a few built-in hints fill in for
// the parameters the wizard always shows, should a server's schema lack them.

/** The parameters the wizard always shows, in this order and grouping. */
export const PRIMARY = [
  {
    title: 'Optimisation',
    keys: [
      'SOLVER.BASE_LR',
      'SOLVER.NAME',
      'SOLVER.LR_SCHEDULER_NAME',
      'SOLVER.SAMPLES_PER_BATCH',
    ],
  },
  {
    title: 'Schedule',
    keys: ['SOLVER.ITERATION_TOTAL', 'SOLVER.ITERATION_SAVE', 'SOLVER.ITERATION_VAL'],
  },
  {
    title: 'Hardware',
    keys: ['SYSTEM.NUM_GPUS', 'SYSTEM.NUM_CPUS', 'MODEL.MIXED_PRECESION'],
  },
];

export const FALLBACK_HINTS = {
  'SOLVER.BASE_LR': { widget: 'log-slider', min: 1e-5, max: 1, type: 'number', help: 'base learning rate' },
  'SOLVER.NAME': { widget: 'select', options: ['SGD', 'Adam', 'AdamW'], help: 'optimizer' },
  'SOLVER.LR_SCHEDULER_NAME': {
    widget: 'select',
    options: ['MultiStepLR', 'WarmupMultiStepLR', 'WarmupCosineLR'],
    help: 'learning-rate schedule',
  },
  'SOLVER.SAMPLES_PER_BATCH': { widget: 'slider', min: 1, max: 64, step: 1, type: 'integer', help: 'patches per batch per device' },
  'SOLVER.ITERATION_TOTAL': { widget: 'log-slider', min: 1, max: 1e6, step: 1, type: 'integer', help: 'training length in iterations' },
  'SOLVER.ITERATION_SAVE': { widget: 'log-slider', min: 1, max: 1e6, step: 1, type: 'integer', help: 'save a checkpoint every N iterations' },
  'SOLVER.ITERATION_VAL': { widget: 'log-slider', min: 1, max: 1e6, step: 1, type: 'integer', help: 'validate every N iterations' },
  'SYSTEM.NUM_GPUS': { widget: 'slider', min: 0, max: 8, step: 1, type: 'integer', help: 'GPUs to train on; 0 trains on the CPU' },
  'SYSTEM.NUM_CPUS': { widget: 'slider', min: 0, max: 32, step: 1, type: 'integer', help: 'data-loading worker processes' },
  'MODEL.MIXED_PRECESION': { widget: 'toggle', type: 'boolean', help: 'automatic mixed precision on CUDA' },
};

export const LABELS = {
  'SOLVER.BASE_LR': 'Learning rate',
  'SOLVER.NAME': 'Optimizer',
  'SOLVER.LR_SCHEDULER_NAME': 'LR schedule',
  'SOLVER.SAMPLES_PER_BATCH': 'Batch size (per device)',
  'SOLVER.ITERATION_TOTAL': 'Total iterations',
  'SOLVER.ITERATION_SAVE': 'Checkpoint every',
  'SOLVER.ITERATION_VAL': 'Validate every',
  'SYSTEM.NUM_GPUS': 'GPUs',
  'SYSTEM.NUM_CPUS': 'CPU workers',
  'MODEL.MIXED_PRECESION': 'Mixed precision',
};

const WIDGETS = new Set(['slider', 'log-slider', 'select', 'toggle', 'number']);

/** Every leaf of a JSON Schema as `{key, node}`, walking `properties` (and allOf/anyOf objects). */
export function leaves(schema, prefix = '', out = []) {
  if (!schema || typeof schema !== 'object') return out;
  const props = schema.properties;
  if (props && typeof props === 'object' && !isLeaf(schema)) {
    for (const [name, node] of Object.entries(props)) {
      const key = prefix ? `${prefix}.${name}` : name;
      if (node && typeof node === 'object' && node.properties && !isLeaf(node)) leaves(node, key, out);
      else out.push({ key, node: node ?? {} });
    }
  }
  return out;
}

// A node with a widget hint is a leaf even if it also describes an object form (a section
// that may be written as a bare boolean, for instance).
function isLeaf(node) {
  const hint = node['x-trainboard'];
  return !!hint && hint !== null && (typeof hint === 'string' || hint.widget);
}

/** The JSON Schema types a node allows (flattening anyOf/oneOf), e.g. ['number', 'null']. */
export function typesOf(node) {
  const out = new Set();
  const visit = (n) => {
    if (!n || typeof n !== 'object') return;
    if (Array.isArray(n.type)) n.type.forEach((t) => out.add(t));
    else if (n.type) out.add(n.type);
    for (const alt of [...(n.anyOf ?? []), ...(n.oneOf ?? [])]) visit(alt);
  };
  visit(node);
  return [...out];
}

function enumOf(node) {
  if (Array.isArray(node.enum)) return node.enum.filter((v) => v !== null);
  for (const alt of [...(node.anyOf ?? []), ...(node.oneOf ?? [])]) {
    if (Array.isArray(alt.enum)) return alt.enum.filter((v) => v !== null);
  }
  return null;
}

/** One control's description from a schema node (or a fallback hint). */
export function fieldFrom(key, node = {}, fallback = {}) {
  const raw = node['x-trainboard'];
  const hint = typeof raw === 'string' ? { widget: raw } : raw && typeof raw === 'object' ? raw : {};
  const types = typesOf(node);
  const options = hint.options ?? hint.choices ?? enumOf(node) ?? fallback.options ?? null;
  let widget = hint.widget ?? fallback.widget ?? null;
  if (!widget) {
    if (options) widget = 'select';
    else if (types.includes('boolean')) widget = 'toggle';
    else if (types.includes('integer') || types.includes('number')) widget = 'number';
  }
  const integer = types.length
    ? types.includes('integer') && !types.includes('number')
    : fallback.type === 'integer';
  const minimum = node.minimum ?? node.exclusiveMinimum ?? null;
  const maximum = node.maximum ?? node.exclusiveMaximum ?? null;
  const min = hint.min ?? fallback.min ?? minimum ?? 0;
  let max = hint.max ?? fallback.max ?? maximum ?? null;
  if (max === null && (widget === 'slider' || widget === 'log-slider')) max = min + 100;
  return {
    key,
    label: hint.label ?? LABELS[key] ?? humanize(key),
    widget,
    integer: integer || (fallback.type === 'integer' && !types.length),
    min,
    max,
    step: hint.step ?? fallback.step ?? (integer ? 1 : null),
    options,
    help: node.description ?? hint.help ?? fallback.help ?? '',
    default: node.default,
    core: !!(hint.core ?? node['x-core'] ?? true),
    // hard limits the value must respect, from the schema
    minimum,
    maximum,
    exclusiveMinimum: typeof node.exclusiveMinimum === 'number' || node.exclusiveMinimum === true,
    nullable: types.includes('null'),
  };
}

/** `SOLVER.ITERATION_TOTAL` -> `Iteration total`. */
export function humanize(key) {
  const leaf = key.split('.').pop().toLowerCase().replace(/_/g, ' ');
  return leaf.charAt(0).toUpperCase() + leaf.slice(1);
}

/**
 * The wizard's parameter form: `{primary: [{title, fields}], more: [{title, fields}]}`.
 * Primary fields always appear (schema hints win over the built-in ones); `more` lists the
 * schema's other keys that carry a widget hint, grouped by section. `gpus` caps the GPU
 * slider at what the server detects.
 */
export function buildForm(schema, { gpus = null } = {}) {
  const byKey = new Map(leaves(schema).map(({ key, node }) => [key, node]));
  const primaryKeys = new Set(PRIMARY.flatMap((g) => g.keys));
  const adjust = (field) => {
    if (field.key === 'SYSTEM.NUM_GPUS' && typeof gpus === 'number') {
      field.min = 0;
      field.max = Math.max(0, gpus);
      field.widget = 'slider';
      field.step = 1;
      field.integer = true;
    }
    return field;
  };
  const primary = PRIMARY.map((g) => ({
    title: g.title,
    fields: g.keys.map((k) => adjust(fieldFrom(k, byKey.get(k) ?? {}, FALLBACK_HINTS[k] ?? {}))),
  }));
  const groups = new Map();
  for (const [key, node] of byKey) {
    if (primaryKeys.has(key)) continue;
    const raw = node['x-trainboard'];
    if (!raw) continue;
    const field = fieldFrom(key, node);
    if (!WIDGETS.has(field.widget)) continue;
    if (raw && typeof raw === 'object' && raw.core === false) continue;
    const section = key.split('.').slice(0, -1).join('.');
    if (!groups.has(section)) groups.set(section, []);
    groups.get(section).push(field);
  }
  const more = [...groups.entries()].map(([title, fields]) => ({ title, fields }));
  return { primary, more };
}

/** GPUs the server detected: /api/health lists them (or, from older servers, counts them). */
export function gpuCount(health) {
  const g = health?.gpus;
  if (Array.isArray(g)) return g.length;
  return typeof g === 'number' ? g : null;
}

// ---------------------------------------------------------------- log slider <-> value

/** Slider position in [0, 1000] for a value on a log scale between min and max. */
export function toLogPosition(value, min, max) {
  const lo = Math.log10(Math.max(min, 1e-12));
  const hi = Math.log10(max);
  const v = Math.log10(Math.min(max, Math.max(min, value || min)));
  return Math.round(((v - lo) / (hi - lo)) * 1000);
}

/** The value at a log-slider position, rounded to 2 significant digits (and to an int). */
export function fromLogPosition(pos, min, max, integer = false) {
  const lo = Math.log10(Math.max(min, 1e-12));
  const hi = Math.log10(max);
  const raw = Math.pow(10, lo + (pos / 1000) * (hi - lo));
  let v = Number(raw.toPrecision(2));
  if (integer) v = Math.max(Math.ceil(min), Math.round(v));
  return Math.min(max, Math.max(min, v));
}

/** Turn the text of a number box into a value for the field, or an error message. */
export function parseFieldValue(field, text) {
  const s = String(text).trim();
  if (s === '' && field.nullable) return { value: null };
  const v = Number(s);
  if (s === '' || !Number.isFinite(v)) return { error: 'a number is needed' };
  if (field.integer && !Number.isInteger(v)) return { error: 'a whole number is needed' };
  if (field.minimum !== null && field.minimum !== undefined) {
    if (field.exclusiveMinimum ? v <= field.minimum : v < field.minimum)
      return { error: `must be ${field.exclusiveMinimum ? 'above' : 'at least'} ${field.minimum}` };
  }
  if (field.maximum !== null && field.maximum !== undefined && v > field.maximum)
    return { error: `must be at most ${field.maximum}` };
  return { value: v };
}

/**
 * A warning for a value the schema accepts but that lies outside the control's usual range
 * (the slider's ends): a learning rate of 5 is legal YAML and a sure divergence.
 */
export function plausibility(field, value) {
  if (typeof value !== 'number' || !Number.isFinite(value)) return null;
  if (field.widget !== 'slider' && field.widget !== 'log-slider') return null;
  const { min, max } = field;
  if (typeof max === 'number' && value > max)
    return `${value} is above the usual range (${min} – ${max}); check it is what you mean.`;
  if (typeof min === 'number' && value < min && !(field.widget === 'slider' && value === 0))
    return `${value} is below the usual range (${min} – ${max}); check it is what you mean.`;
  return null;
}
