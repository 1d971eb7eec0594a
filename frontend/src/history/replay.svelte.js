// Timeline replay of a stored run, flat in the run's length: nothing loads the whole run.
//
// A position is a run version k (0..total: the first k events). The view at k is drawn from
// the run page's read model (GET /api/runs/{id}/page): its lifecycle events up to k give the
// state, its series buckets complete by k give the curves (lib/buckets.js `until`), and a
// window of the events around k (GET /api/runs/{id}/events?after_version=, one bounded page)
// folded on top gives the exact recent detail: the last points, logs, progress, iteration.
// A scrub draws at once from the read model and refines when its window arrives; answers
// overtaken by a newer scrub are dropped. Playing advances over the events' own timestamps
// at 1x to 100x (long silences are cut short), fetching the next page ahead of the position.

import { get } from '../lib/api.js';
import { columns, until } from '../lib/buckets.js';
import { newRun, applyEvent, snapshot, duration, LIFECYCLE_TYPES } from '../lib/fold.js';

export const SPEEDS = [1, 2, 5, 10, 25, 50, 100];
export const MAX_GAP_S = 2; // replay time: a longer silence between events is cut to this
export const WINDOW = 1000; // events fetched before a position (and as many after it)
// The page's kept events a view folds (logs and progress come from the window, exact).
const KEPT = new Set([...LIFECYCLE_TYPES, 'trainer_ready', 'validation', 'checkpoint']);

/** The run as of version `k`, from the page alone: kept events up to k, buckets done by k. */
export function pageView(runId, page, k) {
  const run = newRun(runId);
  for (const e of page.events) {
    if (e.version > k) break;
    if (!KEPT.has(e.type)) continue;
    run.version = e.version - 1; // the page keeps some events, not all: no gap to report
    run.lastSeq = 0;
    applyEvent(run, e);
  }
  const s = page.series;
  const done = (name) => until(s[name]?.buckets ?? [], k);
  run.metrics = columns({ loss: done('loss'), lr: done('lr') });
  run.validation = columns({ loss: done('val_loss'), dice: done('dice'), iou: done('iou') });
  const its = run.metrics.iteration;
  if (its.length) run.iteration = its[its.length - 1];
  return run;
}

export class Replay {
  loading = $state(false);
  loaded = $state(0); // events in the window held now (bounded)
  error = $state(null);
  /** The position: how many of the run's events are folded into `view` (0..total). */
  index = $state(0);
  total = $state(0);
  playing = $state(false);
  speed = $state(10);
  view = $state.raw(null);
  /** The kept lifecycle events ({version, type, ts}): the state timeline under the scrubber. */
  marks = $state.raw([]);
  firstTs = $state(null);
  lastTs = $state(null);
  /** How long the replayed run trained, by its own timestamps. */
  runDuration = $state(null);
  /** The event at the position when it is in the window (null at 0 or before it arrives). */
  current = $state.raw(null);

  #runId;
  #page = null;
  #window = []; // contiguous events by version, around the position
  #run = null; // pageView(window start) + the window's events up to #applied
  #base = -1; // the version #run's page part is at
  #applied = 0; // the last version folded into #run
  #ticket = 0;
  #fetching = null;
  #inflight = null;
  #wanted = null; // the position a window is wanted for, when one is already on its way
  #clock = 0; // replay time, in event-ts seconds
  #raf = null;
  #last = 0;

  constructor(runId) {
    this.#runId = runId;
    this.view = snapshot(newRun(runId));
  }

  async load() {
    this.loading = true;
    this.error = null;
    try {
      const { run, page } = await get(`runs/${this.#runId}/page`);
      this.#page = page;
      this.total = page.version;
      this.marks = page.events.filter((e) => LIFECYCLE_TYPES.has(e.type)).map((e) => ({ version: e.version, type: e.type, ts: e.ts }));
      this.firstTs = page.events[0]?.ts ?? run.created_at ?? null;
      this.lastTs = Math.max(this.firstTs ?? 0, ...page.events.map((e) => e.ts), ...Object.values(page.series).map((s) => s.buckets.at(-1)?.[9] ?? 0));
      const whole = pageView(this.#runId, page, page.version);
      this.runDuration = duration(whole, this.lastTs);
      await this.seek(0);
    } catch (e) {
      this.error = e.message;
    } finally {
      this.loading = false;
    }
  }

  /** Move to version `k`: drawn now from what is held, exact once its window is here. */
  seek(k) {
    if (!this.#page) return Promise.resolve();
    k = Math.max(0, Math.min(this.total, Math.round(k)));
    this.#ticket++; // what is on its way was for another position
    this.index = k;
    if (this.#holds(k)) {
      this.#show(k);
      return Promise.resolve();
    }
    this.#show(k, true); // the read model's view, until the window arrives
    return this.#fetchAround(k);
  }

  #holds(k) {
    const w = this.#window;
    if (k === 0) return true;
    return w.length > 0 && w[0].version <= k && k <= w[w.length - 1].version;
  }

  // One window request in flight at a time, for the latest position asked: a drag across
  // the run costs one request per round trip, not one per input event.
  #fetchAround(k) {
    this.#ticket++; // results of play's fetches ahead are for another position now
    this.#wanted = k;
    this.#inflight ??= this.#fetchWanted().finally(() => (this.#inflight = null));
    return this.#inflight;
  }

  async #fetchWanted() {
    while (this.#wanted !== null) {
      const k = this.#wanted;
      this.#wanted = null;
      const ticket = this.#ticket;
      const page = await get(`runs/${this.#runId}/events`, { after_version: Math.max(0, k - WINDOW), limit: 2 * WINDOW });
      if (ticket !== this.#ticket && this.#wanted === null) return; // destroyed, or play moved on
      this.#window = page.events;
      this.loaded = page.events.length;
      this.#base = -1;
      if (this.#holds(this.index)) this.#show(this.index);
      if (this.#wanted !== null && this.#holds(this.#wanted)) this.#wanted = null;
    }
  }

  /** Fetch the events ahead of the position (playing forward): the page after the window
   * when the position is in it, else the page after the position; at most 6 windows held. */
  #extend() {
    const w = this.#window;
    const inside = w.length > 0 && w[0].version <= this.index + 1;
    const after = inside ? w[w.length - 1].version : this.index;
    if (this.#fetching || after >= this.total) return;
    const ticket = this.#ticket;
    this.#fetching = get(`runs/${this.#runId}/events`, { after_version: after, limit: 2 * WINDOW })
      .then((page) => {
        if (ticket !== this.#ticket || !page.events.length) return;
        const joined = inside ? [...this.#window, ...page.events] : page.events;
        const drop = Math.max(0, joined.length - 6 * WINDOW);
        this.#window = drop ? joined.slice(drop) : joined;
        if (drop || !inside) this.#base = -1; // the window's start moved: refold from the page there
        this.loaded = this.#window.length;
      })
      .catch((e) => (this.error = e.message))
      .finally(() => (this.#fetching = null));
  }

  #show(k, pageOnly = false) {
    const w = this.#window;
    const start = pageOnly || !w.length || k < w[0].version ? k : w[0].version - 1;
    if (this.#base !== start || this.#applied > k) {
      this.#run = pageView(this.#runId, this.#page, start);
      this.#base = start;
      this.#applied = start;
    }
    const run = this.#run;
    if (!pageOnly && w.length) {
      for (let i = Math.max(0, this.#applied - w[0].version + 1); i < w.length && w[i].version <= k; i++) {
        run.version = w[i].version - 1; // folded from the page's state: continue from here
        run.lastSeq = 0;
        applyEvent(run, w[i]);
        this.#applied = w[i].version;
      }
    }
    run.version = k;
    run.events = k;
    const at = !pageOnly && w.length && k >= w[0].version ? w[k - w[0].version] : null;
    this.current = at ?? null;
    if (at) this.#clock = at.ts;
    this.view = snapshot(run);
  }

  play() {
    if (!this.total) return;
    if (this.index >= this.total) this.seek(0);
    this.playing = true;
    this.#last = performance.now();
    const step = (now) => {
      if (!this.playing) return;
      const dt = Math.min(0.25, (now - this.#last) / 1000);
      this.#last = now;
      this.#advance(dt * this.speed);
      if (this.index >= this.total) {
        this.playing = false;
        return;
      }
      this.#raf = requestAnimationFrame(step);
    };
    this.#raf = requestAnimationFrame(step);
  }

  pause() {
    this.playing = false;
    if (this.#raf) cancelAnimationFrame(this.#raf);
    this.#raf = null;
  }

  toggle() {
    if (this.playing) this.pause();
    else this.play();
  }

  setSpeed(s) {
    this.speed = s;
  }

  #advance(seconds) {
    const w = this.#window;
    let i = w.length ? this.index - w[0].version + 1 : -1; // the next event's place in the window
    if (i < 0 || i >= w.length) return this.#extend(); // on its way
    if (w.length - i < WINDOW) this.#extend();
    // Skip silences: never wait more than MAX_GAP_S of replay time for the next event.
    if (w[i].ts - this.#clock > MAX_GAP_S) this.#clock = w[i].ts - MAX_GAP_S;
    this.#clock += seconds;
    while (i < w.length && w[i].ts <= this.#clock) i++;
    const k = w[0].version + i - 1;
    if (k !== this.index) {
      const clock = this.#clock;
      this.index = k;
      this.#show(k);
      this.#clock = clock;
    }
  }

  destroy() {
    this.pause();
    this.#ticket++;
    this.#wanted = null;
  }
}
