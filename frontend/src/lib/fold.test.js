import { describe, it, expect } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import {
  newRun,
  applyEvent,
  foldEvents,
  legalCommands,
  allows,
  duration,
  LOG_CAP,
  seedFromPage,
  summaryOf,
  jobStateText,
} from './fold.js';

// The event logs both folds are held to (tests/test_fold_fixtures.py folds them with
// backend.projections.summarize): the two must never drift apart.
const FIXTURES = fileURLToPath(new URL('../../../tests/fixtures/event_logs/', import.meta.url));
const fixtures = readdirSync(FIXTURES)
  .filter((f) => f.endsWith('.json'))
  .map((f) => [f, JSON.parse(readFileSync(FIXTURES + f, 'utf8'))]);

describe('shared event-log fixtures', () => {
  it('there are fixtures to check', () => {
    expect(fixtures.length).toBeGreaterThanOrEqual(4);
  });
  it.each(fixtures)('%s folds to its expected summary', (_, fx) => {
    const summary = summaryOf(foldEvents(fx.events, fx.run_id));
    for (const [key, value] of Object.entries(fx.expected)) {
      expect([key, summary[key]]).toEqual([key, value]);
    }
  });
});

// A little event factory: seq and version count up like the server's single writer.
function history(runId = 'r1') {
  let seq = 100;
  let version = 0;
  let ts = 1000;
  const events = [];
  const add = (type, data = {}) => {
    const e = { seq: ++seq, run_id: runId, version: ++version, type, ts: (ts += 1), data };
    events.push(e);
    return e;
  };
  return { events, add };
}

function created(add, total = 100) {
  return add('created', {
    name: 'demo',
    config: 'SOLVER:\n  BASE_LR: 0.01\n',
    source: { config: 'SOLVER:\n  BASE_LR: 0.01\n', base: null, overrides: [] },
    output_path: '/out',
    log_path: '/out/log',
    seed: 0,
    total_iterations: total,
  });
}

describe('lifecycle, mirroring backend/fsm/machine.py', () => {
  it('legal commands per state', () => {
    expect(legalCommands(null)).toEqual(['create']);
    expect(legalCommands('Idle')).toEqual(['start']);
    expect(legalCommands('Training')).toEqual(['stop']);
    expect(legalCommands('Training', true)).toEqual([]);
    expect(legalCommands('Stopped')).toEqual(['resume']);
    expect(legalCommands('Error')).toEqual(['resume']);
    expect(legalCommands('Complete')).toEqual([]);
  });

  it('facts only while training', () => {
    expect(allows('Training', false, 'metric')).toBe(true);
    expect(allows('Idle', false, 'metric')).toBe(false);
    expect(allows('Complete', false, 'log')).toBe(false);
    // A run waiting to be resumed may be told why an automatic resume was refused.
    expect(allows('Stopped', false, 'log')).toBe(true);
    expect(allows('Error', false, 'log')).toBe(true);
    expect(allows('Stopped', false, 'metric')).toBe(false);
  });

  it('created -> started -> metrics -> completed', () => {
    const { events, add } = history();
    created(add);
    add('started', { attempt: 1 });
    add('trainer_ready', { device: 'cpu', parameters: 1234 });
    for (let i = 1; i <= 5; i++) add('metric', { iteration: i, loss: 1 / i, lr: 0.01 });
    add('progress', { iteration: 5, total: 100, its_per_s: 10, eta_s: 9.5, elapsed_s: 0.5 });
    add('validation', { iteration: 5, loss: 0.4, dice: 0.7, iou: 0.55, preview: '/out/p5.png', best: true });
    add('checkpoint', { iteration: 5, path: '/out/checkpoint_00005.pth.tar', best: true });
    add('completed', { iteration: 5, metrics: { dice: 0.7 }, checkpoint: '/out/checkpoint_00005.pth.tar' });
    const run = foldEvents(events);
    expect(run.state).toBe('Complete');
    expect(run.name).toBe('demo');
    expect(run.total).toBe(100);
    expect(run.metrics.iteration).toEqual([1, 2, 3, 4, 5]);
    expect(run.metrics.loss[4]).toBeCloseTo(0.2);
    expect(run.validation.dice).toEqual([0.7]);
    expect(run.previews).toHaveLength(1);
    expect(run.checkpoints[0].best).toBe(true);
    expect(run.bestDice).toBe(0.7);
    expect(run.bestIteration).toBe(5);
    expect(run.final).toEqual({ dice: 0.7 });
    expect(run.itsPerS).toBeNull();
    expect(run.etaS).toBeNull();
    expect(run.endedAt).not.toBeNull();
    expect(run.problems).toEqual([]);
    expect(run.version).toBe(events.length);
    expect(run.lastSeq).toBe(events[events.length - 1].seq);
    expect(duration(run)).toBeGreaterThan(0);
  });

  it('a stop keeps Training with stopping until stopped; then resume', () => {
    const { events, add } = history();
    created(add);
    add('started', { attempt: 1 });
    add('metric', { iteration: 1, loss: 1, lr: 0.1 });
    add('stop_requested', { deadline_s: 30 });
    let run = foldEvents(events);
    expect(run.state).toBe('Training');
    expect(run.stopping).toBe(true);
    expect(run.stop.deadlineS).toBe(30);
    add('stop_escalated', { signal: 'SIGTERM', after_s: 30 });
    add('stopped', { iteration: 1, checkpoint: '/out/c1' });
    run = foldEvents(events);
    expect(run.state).toBe('Stopped');
    expect(run.stopping).toBe(false);
    expect(run.stop.escalations).toHaveLength(1);
    expect(run.lastCheckpoint).toBe('/out/c1');
    add('resumed', { attempt: 2, checkpoint: '/out/c1' });
    run = foldEvents(events);
    expect(run.state).toBe('Training');
    expect(run.attempts).toBe(2);
    expect(run.stop).toBeNull();
  });

  it('a second stop_requested while stopping is illegal (recorded, skipped)', () => {
    const { events, add } = history();
    created(add);
    add('started');
    add('stop_requested', { deadline_s: 10 });
    add('stop_requested', { deadline_s: 10 });
    const run = foldEvents(events);
    expect(run.problems).toHaveLength(1);
    expect(run.stopping).toBe(true);
    expect(run.version).toBe(4); // still advanced, as the server's lenient replay does
  });

  it('failed -> Error with message, hint, traceback; resumable', () => {
    const { events, add } = history();
    created(add);
    add('started');
    add('failed', { message: 'Loss is NaN', hint: 'Lower SOLVER.BASE_LR', traceback: 'Traceback...', iteration: 7 });
    const run = foldEvents(events);
    expect(run.state).toBe('Error');
    expect(run.error).toMatchObject({ message: 'Loss is NaN', hint: 'Lower SOLVER.BASE_LR', iteration: 7 });
    expect(legalCommands(run.state, run.stopping)).toEqual(['resume']);
  });

  it('facts outside Training are problems, not state', () => {
    const { events, add } = history();
    created(add);
    add('metric', { iteration: 1, loss: 1 });
    const run = foldEvents(events);
    expect(run.metrics.iteration).toEqual([]);
    expect(run.problems[0]).toMatch(/cannot happen while Idle/);
  });

  it('unknown event types are problems', () => {
    const { events, add } = history();
    created(add);
    add('teleported', {});
    const run = foldEvents(events);
    expect(run.problems[0]).toMatch(/unknown event type/);
  });
});

describe('de-duplication by seq and gaps by version', () => {
  it('re-sent events after a reconnect are ignored', () => {
    const { events, add } = history();
    created(add);
    add('started');
    for (let i = 1; i <= 10; i++) add('metric', { iteration: i, loss: i, lr: 0.1 });
    const run = newRun('r1');
    for (const e of events.slice(0, 8)) expect(applyEvent(run, e)).toBe('applied');
    // The server resends from an older seq: everything up to 8 again, then the rest.
    const results = events.slice(3).map((e) => applyEvent(run, e));
    expect(results.slice(0, 5)).toEqual(Array(5).fill('duplicate'));
    expect(results.slice(5).every((r) => r === 'applied')).toBe(true);
    expect(run.metrics.iteration).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(run.metrics.iteration.length).toBe(new Set(run.metrics.iteration).size);
  });

  it('a missing version is a gap: not folded', () => {
    const { events, add } = history();
    created(add);
    add('started');
    add('metric', { iteration: 1, loss: 1 });
    add('metric', { iteration: 2, loss: 1 });
    const run = newRun('r1');
    applyEvent(run, events[0]);
    applyEvent(run, events[1]);
    expect(applyEvent(run, events[3])).toBe('gap');
    expect(run.metrics.iteration).toEqual([]);
    expect(applyEvent(run, events[2])).toBe('applied');
    expect(applyEvent(run, events[3])).toBe('applied');
  });

  it('folding in pieces equals folding at once', () => {
    const { events, add } = history();
    created(add);
    add('started');
    for (let i = 1; i <= 50; i++) add('metric', { iteration: i, loss: Math.sin(i), lr: 0.1 });
    add('stop_requested', { deadline_s: 5 });
    add('stopped', { iteration: 50, checkpoint: 'c' });
    const whole = foldEvents(events);
    const parts = newRun('r1');
    for (let k = 0; k < events.length; k += 7) for (const e of events.slice(0, k + 7)) applyEvent(parts, e);
    const strip = (r) => ({ ...r, rev: 0 });
    expect(strip(parts)).toEqual(strip(whole));
  });
});

describe('resumed attempts', () => {
  it('points after the resume checkpoint replace the earlier attempt', () => {
    const { events, add } = history();
    created(add);
    add('started');
    for (let i = 1; i <= 12; i++) add('metric', { iteration: i, loss: 1, lr: 0.1 });
    add('validation', { iteration: 10, dice: 0.5, iou: 0.4, loss: 0.3 });
    add('stop_requested', { deadline_s: 5 });
    add('stopped', { iteration: 12, checkpoint: 'c10' });
    add('resumed', { attempt: 2, checkpoint: 'c10' });
    for (let i = 11; i <= 14; i++) add('metric', { iteration: i, loss: 2, lr: 0.1 });
    const run = foldEvents(events);
    expect(run.metrics.iteration).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    expect(run.metrics.loss.slice(10)).toEqual([2, 2, 2, 2]);
    expect(run.cuts).toBe(1);
  });
});

describe('logs', () => {
  it('trainer logs and lifecycle lines, capped', () => {
    const { events, add } = history();
    created(add);
    add('started');
    for (let i = 0; i < LOG_CAP + 10; i++) add('log', { level: 'info', message: `line ${i}` });
    const run = foldEvents(events);
    expect(run.logs.length).toBe(LOG_CAP);
    expect(run.logs[run.logs.length - 1].message).toBe(`line ${LOG_CAP + 9}`);
  });
});

describe('speed and duration', () => {
  it('rate and ETA come from the current attempt, not its start-up or earlier attempts', () => {
    const { events, add } = history();
    created(add, 100);
    add('started', { attempt: 1 });
    for (let i = 1; i <= 10; i++) add('metric', { iteration: i, loss: 1 });
    add('stopped', { iteration: 10, checkpoint: '/out/c10' });
    add('resumed', { attempt: 2, checkpoint: '/out/c10' });
    // The trainer's first figure after a resume counts the checkpoint loading in.
    add('progress', { iteration: 10, total: 100, its_per_s: 0.24, eta_s: 375 });
    for (let i = 11; i <= 20; i++) add('metric', { iteration: i, loss: 1 });
    add('progress', { iteration: 20, total: 100, its_per_s: 0.3, eta_s: 266 });
    const run = foldEvents(events);
    expect(run.itsPerS).toBeCloseTo(1, 6); // one iteration per event, one second apart
    expect(run.etaS).toBeCloseTo(80, 6);
  });

  it("a replayed run's duration is its own, whatever the clock says", async () => {
    const { runDuration } = await import('./fold.js');
    const { events, add } = history();
    created(add, 100);
    add('started', { attempt: 1 }); // ts 1002
    for (let i = 1; i <= 5; i++) add('metric', { iteration: i, loss: 1 });
    add('completed', { iteration: 5 }); // ts 1008
    expect(runDuration(events)).toBe(6);
    expect(runDuration(events.slice(0, 4))).toBe(2); // still training: up to its last event
  });
});

describe('seedFromPage: a run drawn from the server run page, then live', () => {
  it('folds the kept events, draws the buckets extremes and goes on from the page seq', () => {
    const { events, add } = history();
    created(add, 1000);
    add('started', { attempt: 1 });
    const log = add('log', { level: 'info', message: 'hello' });
    const page = {
      run_id: 'r1',
      seq: 5000,
      version: 900,
      series: {
        // [x_first, x_last, x_min, y_min, x_max, y_max, n]
        loss: { count: 800, buckets: [[1, 400, 300, 0.1, 2, 9.0, 400], [401, 800, 800, 0.05, 401, 0.2, 400]] },
        lr: { count: 1, buckets: [[1, 1, 1, 0.01, 1, 0.01, 1]] },
        dice: { count: 1, buckets: [[500, 500, 500, 0.7, 500, 0.7, 1]] },
      },
      events: [...events, { ...log, seq: 4999, version: 899, data: { message: 'late' } }],
    };
    const run = seedFromPage('r1', page, { iteration: 800, last_loss: 0.05, best_dice: 0.7, best_iteration: 500 });
    expect(run.state).toBe('Training');
    expect(run.logs.map((l) => l.message).slice(-2)).toEqual(['hello', 'late']);
    expect(run.metrics.iteration).toEqual([1, 2, 300, 401, 800]);
    expect(run.metrics.loss).toEqual([null, 9.0, 0.1, 0.2, 0.05]);
    expect(run.metrics.lr).toEqual([0.01, null, null, null, null]);
    expect(run.validation.dice).toEqual([0.7]);
    expect([run.version, run.lastSeq, run.iteration, run.bestDice]).toEqual([900, 5000, 800, 0.7]);
    // Live from the page's seq: the next event applies, an old one is a duplicate.
    const next = { seq: 5001, run_id: 'r1', version: 901, type: 'metric', ts: 2000, data: { iteration: 801, loss: 0.04 } };
    expect(applyEvent(run, next)).toBe('applied');
    expect(run.metrics.iteration.at(-1)).toBe(801);
    expect(applyEvent(run, { ...next, seq: 4000, version: 850 })).toBe('duplicate');
  });
});

describe('queue, management, trials, executor facts', () => {
  it('queued is a flag of Idle; started ends it', () => {
    const { events, add } = history();
    created(add);
    add('queued', { rank: 2 });
    let run = foldEvents(events);
    expect([run.state, run.queued, run.queueRank]).toEqual(['Idle', true, 2]);
    expect(allows('Idle', false, 'queued', { queued: true })).toBe(false);
    expect(allows('Idle', false, 'queue_moved', { queued: false })).toBe(false);
    add('started', { attempt: 1 });
    run = foldEvents(events);
    expect([run.state, run.queued, run.queueRank]).toEqual(['Training', false, null]);
  });

  it('management events are legal in every state and change none; delete is a tombstone', () => {
    for (const state of ['Idle', 'Training', 'Complete', 'Error', 'Stopped']) {
      expect(allows(state, false, 'renamed')).toBe(true);
      expect(allows(state, true, 'archived')).toBe(true);
      expect(allows(state, false, 'deleted')).toBe(state !== 'Training');
      expect(allows(state, false, 'renamed', { deleted: true })).toBe(false);
    }
    const { events, add } = history();
    created(add);
    add('deleted', { remove_files: true, removed: ['/out/log/r1'] });
    add('started', {});
    const run = foldEvents(events);
    expect(run.deleted).toEqual({ removeFiles: true, removed: ['/out/log/r1'] });
    expect(run.state).toBe('Idle');
    expect(run.problems[0]).toMatch(/while deleted/);
  });

  it('job_state is a fact of Training and reads as words', () => {
    expect(allows('Idle', false, 'job_state')).toBe(false);
    expect(jobStateText({ state: 'PENDING', reason: 'Resources', position: 3 })).toBe('Pending: Resources (position 3)');
    expect(jobStateText({ state: 'NODE_FAIL' })).toBe('Node fail');
    expect(jobStateText(null)).toBe('');
  });
});
