// The client-side fold: events -> per-run state, mirroring backend/fsm (machine.py, fold.py)
// and backend/projections.py. Pure functions over a plain accumulator: the same code folds
// live events as they arrive and replays a stored history to any moment.
//
// `applyEvent(run, event)` mutates `run` (series are large parallel arrays; copying them per
// event would make a 100,000-point fold quadratic) and reports what it did. Given the same
// event sequence it always produces the same state.

import { columns } from './buckets.js';

export const IDLE = 'Idle';
export const TRAINING = 'Training';
export const COMPLETE = 'Complete';
export const ERROR = 'Error';
export const STOPPED = 'Stopped';
export const STATES = [IDLE, TRAINING, COMPLETE, ERROR, STOPPED];

// Facts never change the lifecycle state; legal only while a run trains (events.py).
export const FACT_TYPES = ['trainer_ready', 'metric', 'progress', 'validation', 'checkpoint', 'log', 'job_state'];
const FACTS = new Set(FACT_TYPES);

// The queue is a flag of Idle, as `stopping` is of Training: `queued` sets it (Idle, not
// queued), `queue_moved`/`dequeued` need it, leaving Idle ends it (contracts §1).
export const QUEUE_TYPES = ['queued', 'queue_moved', 'dequeued'];
// Experiment management: legal in every state, never change it; `deleted` is a tombstone
// (not while Training or queued; after it nothing is legal).
export const MANAGEMENT_TYPES = ['renamed', 'tags_set', 'notes_set', 'archived', 'unarchived', 'deleted'];
const QUEUE = new Set(QUEUE_TYPES);
const MANAGEMENT = new Set(MANAGEMENT_TYPES);

// Lifecycle transitions (machine.py TRANSITIONS): trigger -> [sources, dest or null].
export const TRANSITIONS = {
  started: [[IDLE], TRAINING],
  stop_requested: [[TRAINING], null],
  stop_escalated: [[TRAINING], null],
  completed: [[TRAINING], COMPLETE],
  failed: [[TRAINING], ERROR],
  stopped: [[TRAINING], STOPPED],
  resumed: [[STOPPED, ERROR], TRAINING],
};

// Commands and the event each becomes (events.py COMMAND_EVENTS), in the server's order.
export const COMMAND_EVENTS = {
  create: 'created',
  start: 'started',
  stop: 'stop_requested',
  resume: 'resumed',
};

// Events after which a run's server summary (legal_commands, queue position) is refetched.
export const LIFECYCLE_TYPES = new Set(['created', ...Object.keys(TRANSITIONS), ...QUEUE_TYPES, ...MANAGEMENT_TYPES]);

/**
 * Whether the machine accepts `type` in `state` (with the stopping flag, and the run's
 * `queued` and `deleted` flags).
 */
export function allows(state, stopping, type, { queued = false, deleted = false } = {}) {
  if (type === 'created') return state === null;
  if (state === null || deleted) return false;
  if (type === 'log') return state === TRAINING || state === STOPPED || state === ERROR;
  if (FACTS.has(type)) return state === TRAINING;
  if (type === 'queued') return state === IDLE && !queued;
  if (QUEUE.has(type)) return state === IDLE && queued;
  if (type === 'deleted') return state !== TRAINING && !queued; // cancel it first
  if (MANAGEMENT.has(type)) return true;
  const t = TRANSITIONS[type];
  if (!t) return false;
  if (type === 'stop_requested' && stopping) return false;
  return t[0].includes(state);
}

/** The commands legal in a state: a mirror of machine.legal_commands, for replay display. */
export function legalCommands(state, stopping = false) {
  if (state === null || state === undefined) return ['create'];
  return Object.entries(COMMAND_EVENTS)
    .filter(([, type]) => allows(state, stopping, type))
    .map(([command]) => command);
}

/** A run before any event. */
export function newRun(runId) {
  return {
    runId,
    rev: 0,
    cuts: 0, // how many times a resumed attempt cut the series (charts recompute then)
    state: null,
    stopping: false,
    version: 0,
    lastSeq: 0,
    events: 0,
    problems: [],
    // created
    name: '',
    config: '',
    source: null,
    outputPath: null,
    logPath: null,
    seed: null,
    total: 0,
    warnings: [],
    // summary (projections.py)
    iteration: 0,
    lastLoss: null,
    itsPerS: null,
    etaS: null,
    elapsedS: null,
    bestDice: null,
    bestIteration: null,
    lastCheckpoint: null,
    createdAt: null,
    startedAt: null,
    endedAt: null,
    firstTs: null,
    lastTs: null,
    attempts: 0,
    attemptStartedAt: null, // the current attempt's `started`/`resumed`
    pace: [], // [ts, iteration] of the current attempt's latest metrics: its speed
    error: null,
    stop: null,
    trainer: null,
    final: null,
    // queue, management, sweeps, executor (contracts §1)
    queued: false,
    queueRank: null,
    tags: [],
    notes: '',
    archived: false,
    deleted: null, // the tombstone's data: {remove_files, removed}
    sweep: null, // a trial's {id, number, params}
    stopReason: null, // the reason of the stop request that ended it (`pruned` for a trial)
    jobState: null, // the executor's latest word: {executor, state, reason, job_id, ...}
    // series: parallel arrays, x sorted ascending (uPlot's shape)
    metrics: { iteration: [], loss: [], lr: [] },
    validation: { iteration: [], loss: [], dice: [], iou: [] },
    previews: [],
    checkpoints: [],
    logs: [],
  };
}

export const LOG_CAP = 5000;
// The speed is measured over the latest metrics of the current attempt only: a resumed
// attempt's start-up (loading the checkpoint) and earlier attempts do not drag it down.
const PACE_POINTS = 30;

function pace(run, ts, iteration) {
  const p = run.pace;
  if (p.length && iteration <= p[p.length - 1][1]) p.length = 0; // a cut: start again
  p.push([ts, iteration]);
  if (p.length > PACE_POINTS) p.shift();
  if (p.length < 2) return;
  const [t0, i0] = p[0];
  const dt = ts - t0;
  if (dt <= 0) return;
  run.itsPerS = (iteration - i0) / dt;
  run.etaS = run.total > iteration && run.itsPerS > 0 ? (run.total - iteration) / run.itsPerS : null;
}

function log(run, event, level, message, source = null) {
  run.logs.push({ seq: event.seq, ts: event.ts, level, message, source });
  if (run.logs.length > LOG_CAP) run.logs.splice(0, run.logs.length - LOG_CAP);
}

// A resumed attempt restarts from its checkpoint: its points replace the later ones of the
// attempt it resumes, so x stays sorted.
function cutFrom(series, iteration) {
  const xs = series.iteration;
  if (xs.length === 0 || xs[xs.length - 1] < iteration) return false;
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < iteration) lo = mid + 1;
    else hi = mid;
  }
  for (const key of Object.keys(series)) series[key].length = lo;
  return true;
}

const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/**
 * Apply one event. Returns:
 *  'applied'   the event changed the run
 *  'duplicate' seq or version already folded (a resend after reconnect): ignored
 *  'gap'       versions are missing before this one: not applied, the caller must refetch
 *  'illegal'   the lifecycle forbids it here: recorded in run.problems and skipped, as the
 *              server's lenient replay does
 */
export function applyEvent(run, event) {
  if (event.seq <= run.lastSeq || event.version <= run.version) return 'duplicate';
  if (event.version !== run.version + 1) return 'gap';
  run.version = event.version;
  run.lastSeq = event.seq;
  run.events += 1;
  run.rev += 1;
  if (run.firstTs === null) run.firstTs = event.ts;
  run.lastTs = event.ts;

  const type = event.type;
  if (!allows(run.state, run.stopping, type, { queued: run.queued, deleted: run.deleted !== null })) {
    const where = run.deleted !== null ? 'deleted' : (run.state ?? 'not created') + (run.queued ? ' (queued)' : '');
    const why = LIFECYCLE_TYPES.has(type) || FACTS.has(type)
      ? `'${type}' cannot happen while ${where}`
      : `unknown event type '${type}'`;
    run.problems.push(`seq ${event.seq}: ${why}`);
    return 'illegal';
  }
  const t = TRANSITIONS[type];
  if (type === 'created') run.state = IDLE;
  else if (t && t[1] !== null) {
    if (run.state === TRAINING) run.stopping = false; // leaving Training ends any stop
    if (run.state === IDLE) run.queued = false; // leaving Idle ends the queue
    run.state = t[1];
  }
  update(run, event);
  return 'applied';
}

function update(run, event) {
  const d = event.data || {};
  switch (event.type) {
    case 'created':
      run.name = d.name ?? '';
      run.config = d.config ?? '';
      run.source = d.source ?? null;
      run.outputPath = d.output_path ?? null;
      run.logPath = d.log_path ?? null;
      run.seed = d.seed ?? null;
      run.total = d.total_iterations ?? 0;
      run.warnings = Array.isArray(d.warnings) ? d.warnings : []; // accepted, with advice
      run.tags = Array.isArray(d.tags) ? [...d.tags].sort() : []; // a trial's `sweep:<id>`
      run.sweep = d.sweep ?? null;
      run.createdAt = event.ts;
      log(run, event, 'event', `Created “${run.name}” (${run.total} iterations)`);
      break;
    case 'started':
    case 'resumed':
      run.attempts += 1;
      run.startedAt = run.startedAt ?? event.ts;
      run.endedAt = null;
      run.error = null;
      run.etaS = null;
      run.itsPerS = null;
      run.stop = null;
      run.stopReason = null;
      run.queueRank = null;
      run.jobState = null; // the previous attempt's executor state is over
      run.attemptStartedAt = event.ts;
      run.pace = [];
      log(
        run,
        event,
        'event',
        event.type === 'started'
          ? `Training started (attempt ${d.attempt ?? run.attempts})`
          : `Resumed (attempt ${d.attempt ?? run.attempts}) from ${d.checkpoint ?? 'the beginning'}`,
      );
      break;
    case 'stop_requested':
      run.stopping = true;
      run.stop = { requestedAt: event.ts, deadlineS: num(d.deadline_s), escalations: [] };
      run.stopReason = d.reason ?? null;
      log(
        run,
        event,
        'event',
        `Stop requested${d.reason ? ` (${d.reason})` : ''} (escalation after ${d.deadline_s ?? '?'} s)`,
      );
      break;
    case 'stop_escalated':
      if (run.stop) run.stop.escalations.push({ signal: d.signal, afterS: d.after_s, ts: event.ts });
      log(run, event, 'warning', `Stop escalated: ${d.signal} after ${d.after_s} s`);
      break;
    case 'trainer_ready':
      run.trainer = { ...d };
      log(
        run,
        event,
        'event',
        `Trainer ready on ${d.device ?? '?'}` +
          (d.parameters != null ? `, ${Number(d.parameters).toLocaleString('en')} parameters` : '') +
          (d.start_iteration ? `, from iteration ${d.start_iteration}` : ''),
      );
      break;
    case 'metric': {
      const it = d.iteration;
      if (typeof it === 'number') {
        if (cutFrom(run.metrics, it)) run.cuts += 1;
        run.metrics.iteration.push(it);
        run.metrics.loss.push(num(d.loss));
        run.metrics.lr.push(num(d.lr));
      }
      run.iteration = d.iteration ?? run.iteration;
      run.lastLoss = d.loss ?? run.lastLoss;
      if (typeof it === 'number') pace(run, event.ts, it);
      break;
    }
    case 'progress':
      run.iteration = d.iteration ?? run.iteration;
      run.total = d.total ?? run.total;
      if (run.pace.length < 2) {
        // Until this attempt has its own pace, the trainer's figures.
        run.itsPerS = d.its_per_s ?? null;
        run.etaS = d.eta_s ?? null;
      }
      run.elapsedS = d.elapsed_s ?? run.elapsedS;
      break;
    case 'validation': {
      const it = d.iteration;
      if (typeof it === 'number') {
        if (cutFrom(run.validation, it)) run.cuts += 1;
        run.validation.iteration.push(it);
        run.validation.loss.push(num(d.loss));
        run.validation.dice.push(num(d.dice));
        run.validation.iou.push(num(d.iou));
      }
      if (d.preview) run.previews.push({ iteration: it, path: d.preview, best: !!d.best, ts: event.ts });
      if (typeof d.dice === 'number' && (run.bestDice === null || d.dice > run.bestDice)) {
        run.bestDice = d.dice;
        run.bestIteration = d.iteration ?? null;
      }
      break;
    }
    case 'checkpoint':
      run.lastCheckpoint = d.path ?? run.lastCheckpoint;
      run.checkpoints.push({ iteration: d.iteration, path: d.path, best: !!d.best, ts: event.ts });
      break;
    case 'log':
      log(run, event, d.level || 'info', String(d.message ?? ''), d.source ?? null);
      break;
    case 'job_state':
      run.jobState = { ...d };
      log(run, event, 'event', `${d.executor ?? 'executor'}: ${jobStateText(d)}`);
      break;
    case 'queued':
    case 'queue_moved':
      run.queued = true;
      run.queueRank = num(d.rank);
      if (event.type === 'queued') log(run, event, 'event', 'Queued: waiting for a free slot');
      break;
    case 'dequeued':
      run.queued = false;
      run.queueRank = null;
      log(run, event, 'event', `Taken out of the queue (${d.reason ?? 'cancelled'})`);
      break;
    case 'renamed':
      log(run, event, 'event', `Renamed “${run.name}” → “${d.name ?? ''}”`);
      run.name = d.name ?? run.name;
      break;
    case 'tags_set':
      run.tags = Array.isArray(d.tags) ? [...d.tags].sort() : [];
      break;
    case 'notes_set':
      run.notes = typeof d.notes === 'string' ? d.notes : '';
      break;
    case 'archived':
    case 'unarchived':
      run.archived = event.type === 'archived';
      break;
    case 'deleted':
      run.deleted = { removeFiles: !!d.remove_files, removed: Array.isArray(d.removed) ? d.removed : [] };
      log(run, event, 'warning', `Deleted${d.remove_files ? ` (${run.deleted.removed.length} paths removed)` : ''}`);
      break;
    case 'completed':
    case 'stopped':
    case 'failed':
      run.endedAt = event.ts;
      run.etaS = null;
      run.itsPerS = null;
      run.iteration = d.iteration ?? run.iteration;
      if (d.checkpoint) run.lastCheckpoint = d.checkpoint;
      if (event.type === 'failed') {
        run.error = {
          message: d.message ?? 'Training failed',
          hint: d.hint ?? null,
          traceback: d.traceback ?? null,
          exitCode: d.exit_code ?? null,
          interrupted: !!d.interrupted,
          iteration: d.iteration ?? null,
          cause: d.cause ?? null, // config | data | resources | code
          key: d.key ?? null, // the config key to change, for a config-caused failure
          suggested: d.suggested ?? null, // a value for it
        };
        log(run, event, 'error', `Failed: ${run.error.message}`);
      } else if (event.type === 'completed') {
        run.final = d.metrics ?? null;
        log(run, event, 'event', `Completed at iteration ${run.iteration}`);
      } else {
        log(
          run,
          event,
          'event',
          `Stopped at iteration ${run.iteration}` +
            (d.checkpoint ? `, checkpoint ${d.checkpoint}` : d.forced ? ' (killed, no checkpoint)' : ''),
        );
      }
      break;
  }
}

/** An executor's state in words: "Pending: Resources (position 3)", "Running". */
export function jobStateText(js) {
  if (!js?.state) return '';
  const state = js.state.charAt(0) + js.state.slice(1).toLowerCase().replaceAll('_', ' ');
  const why = js.reason && js.reason !== 'None' ? `: ${js.reason}` : '';
  const position = js.position != null ? ` (position ${js.position})` : '';
  return state + why + position;
}

/**
 * The fields a fold shares with the server's RunSummary (`backend/projections.py`), under
 * its names: what `tests/fixtures/event_logs/*.json` expect of both folds.
 */
export function summaryOf(run) {
  return {
    state: run.state,
    stopping: run.stopping,
    name: run.name,
    iteration: run.iteration,
    total: run.total,
    attempts: run.attempts,
    best_dice: run.bestDice,
    best_iteration: run.bestIteration,
    last_checkpoint: run.lastCheckpoint,
    queued: run.queued,
    queue_rank: run.queueRank,
    tags: run.tags,
    notes: run.notes,
    archived: run.archived,
    deleted: run.deleted !== null,
    sweep: run.sweep,
    stop_reason: run.stopReason,
    job_state: run.jobState,
    problems: run.problems.length,
  };
}

/**
 * A new object for a run as it is now, for the UI: the small lists are copied and the series
 * containers renewed (their big arrays are shared; `rev` says when they grew).
 */
export function snapshot(run) {
  return {
    ...run,
    metrics: { ...run.metrics },
    validation: { ...run.validation },
    previews: run.previews.slice(),
    checkpoints: run.checkpoints.slice(),
    logs: run.logs.slice(),
    problems: run.problems.slice(),
    pace: run.pace.slice(),
    tags: run.tags.slice(),
  };
}

/**
 * A run as the server's run page (GET /api/runs/{id}/page) shows it: its kept events folded
 * (lifecycle, logs, checkpoints, previews, the latest progress), its series from the
 * page's min/max buckets, and the summary's figures; then live events fold on from
 * `page.seq` (subscribe after it: no gap, no duplicate).
 */
export function seedFromPage(runId, page, summary = null) {
  const run = newRun(runId);
  for (const e of page.events) {
    run.version = e.version - 1; // the page keeps some events, not all: no gap to report
    applyEvent(run, e);
  }
  const s = page.series;
  run.metrics = columns({ loss: s.loss?.buckets, lr: s.lr?.buckets });
  run.validation = columns({ loss: s.val_loss?.buckets, dice: s.dice?.buckets, iou: s.iou?.buckets });
  run.version = page.version;
  run.lastSeq = page.seq;
  run.events = page.version;
  run.rev += 1;
  if (summary) {
    run.iteration = summary.iteration ?? run.iteration;
    run.lastLoss = summary.last_loss ?? run.lastLoss;
    run.bestDice = summary.best_dice ?? run.bestDice;
    run.bestIteration = summary.best_iteration ?? run.bestIteration;
  }
  return run;
}

/** Fold a whole sequence (a run's events in order) into a new run. */
export function foldEvents(events, runId = null) {
  const run = newRun(runId ?? events[0]?.run_id ?? null);
  for (const e of events) applyEvent(run, e);
  return run;
}

/** Duration of a run in seconds, as of `now` for one still going. */
export function duration(run, now) {
  const start = run.startedAt;
  if (start == null) return null;
  const end = run.endedAt ?? (run.state === TRAINING ? now : run.lastTs);
  return end == null ? null : Math.max(0, end - start);
}

/** How long a stored run trained, from its own events (a replay's header, not the clock). */
export function runDuration(events) {
  const run = foldEvents(events);
  return duration(run, run.lastTs);
}
