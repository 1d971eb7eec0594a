// A sweep's summary and trials as the sweep views show them, read tolerantly from the
// server's answers (GET /api/sweeps, /api/sweeps/{id}, /trials; H6's backend/sweepapi.py).

export const OBJECTIVES = {
  max_dice: { label: 'maximise best validation Dice', direction: 'maximize', metric: 'dice' },
  min_val_loss: { label: 'minimise validation loss', direction: 'minimize', metric: 'loss' },
};

const first = (...xs) => xs.find((x) => x !== undefined && x !== null) ?? null;

/** The facts of a sweep summary the views need. */
export function sweepFacts(s) {
  const objective = typeof s.objective === 'string' ? s.objective : (s.objective?.name ?? 'max_dice');
  const best = s.best ?? {};
  return {
    id: first(s.sweep_id, s.id),
    name: s.name ?? '',
    state: s.state ?? '?',
    budget: first(s.budget, s.trials, s.n_trials) ?? 0,
    parallel: first(s.parallel) ?? 1,
    done: first(s.done, s.told, s.counts?.done) ?? 0,
    running: first(s.running, s.counts?.running) ?? 0,
    pruned: first(s.pruned, s.counts?.pruned) ?? 0,
    failed: first(s.failed, s.counts?.failed) ?? 0,
    bestValue: first(s.best_value, typeof s.best === 'number' ? s.best : null, best.value),
    bestTrial: first(s.best_trial, best.number),
    bestRun: first(s.best_run_id, best.run_id),
    space: s.space ?? {},
    objective,
    objectiveLabel: OBJECTIVES[objective]?.label ?? objective,
    direction: OBJECTIVES[objective]?.direction ?? (s.direction === 'minimize' ? 'minimize' : 'maximize'),
    sampler: s.sampler ?? null,
    pruner: s.pruner ?? null,
    createdAt: first(s.created_at),
    legal: s.legal_commands ?? null,
    config: s.config ?? null,
    base: s.base ?? null,
    overrides: s.overrides ?? [],
  };
}

/** One trial row: number, run, params, state (asked: in flight), objective value, pruned. */
export function trialFacts(t) {
  const state = t.state ?? 'asked';
  return {
    number: t.number,
    runId: t.run_id ?? null,
    params: t.params ?? {},
    state,
    inFlight: state === 'asked',
    runState: t.run_state ?? null,
    value: typeof t.value === 'number' ? t.value : null,
    pruned: t.pruned ?? state === 'pruned',
    bestSoFar: typeof t.best_so_far === 'number' ? t.best_so_far : null,
  };
}

/** The trial whose value is best for the direction (none told yet: null). */
export function bestTrial(trials, direction) {
  let best = null;
  for (const t of trials) {
    if (t.value === null || t.state === 'pruned' || t.state === 'fail') continue;
    if (best === null || (direction === 'minimize' ? t.value < best.value : t.value > best.value)) best = t;
  }
  return best;
}

/**
 * The search space in the sweep API's shape from the wizard's marks:
 * {KEY: {type: float|int|choice, low, high, log} | {type: choice, choices}}; with the problems
 * that would make the server refuse it, in words.
 */
export function spaceFrom(marks) {
  const space = {};
  const problems = [];
  for (const [key, m] of Object.entries(marks)) {
    if (m.type === 'choice') {
      const choices = (Array.isArray(m.choices) ? m.choices : String(m.choices ?? '').split(','))
        .map((c) => (typeof c === 'string' ? c.trim() : c))
        .filter((c) => c !== '')
        .map(parseChoice);
      if (choices.length < 2) problems.push(`${key}: give at least two choices, separated by commas`);
      space[key] = { type: 'choice', choices };
    } else {
      const low = Number(m.low);
      const high = Number(m.high);
      if (!Number.isFinite(low) || !Number.isFinite(high) || !(low < high)) problems.push(`${key}: the low end must be a number below the high end`);
      else if (m.log && low <= 0) problems.push(`${key}: a log range needs a low end above 0`);
      if (m.type === 'int' && (!Number.isInteger(low) || !Number.isInteger(high))) problems.push(`${key}: an integer range needs integer ends`);
      space[key] = { type: m.type === 'int' ? 'int' : 'float', low, high, log: !!m.log };
    }
  }
  return { space, problems };
}

function parseChoice(c) {
  if (typeof c !== 'string') return c;
  if (/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(c)) return Number(c);
  if (/^(true|false)$/i.test(c)) return c.toLowerCase() === 'true';
  return c;
}
