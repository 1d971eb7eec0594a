// Timeline replay of a stored run: the same fold as the live view, applied to the run's
// events up to a chosen position. Playing advances a clock over the events' own timestamps
// at 1x to 100x; long idle stretches (a run stopped overnight, then resumed) are skipped.

import { fetchRunEvents } from '../lib/api.js';
import { newRun, applyEvent, snapshot, runDuration as trainedFor } from '../lib/fold.js';

export const SPEEDS = [1, 2, 5, 10, 25, 50, 100];
export const MAX_GAP_S = 2; // replay time: a longer silence between events is cut to this

export class Replay {
  events = $state.raw([]);
  loading = $state(false);
  loaded = $state(0);
  error = $state(null);
  /** How many events are folded into `view` (0..events.length). */
  index = $state(0);
  playing = $state(false);
  speed = $state(10);
  view = $state.raw(null);
  /** How long the replayed run trained, by its own timestamps. */
  runDuration = $state(null);

  #runId;
  #run = null;
  #applied = 0;
  #clock = 0; // replay time, in event-ts seconds
  #raf = null;
  #last = 0;

  constructor(runId) {
    this.#runId = runId;
    this.#run = newRun(runId);
    this.view = snapshot(this.#run);
  }

  async load() {
    this.loading = true;
    this.error = null;
    try {
      this.events = await fetchRunEvents(this.#runId, { onPage: (n) => (this.loaded = n) });
      this.runDuration = trainedFor(this.events);
      this.seek(0);
    } catch (e) {
      this.error = e.message;
    } finally {
      this.loading = false;
    }
  }

  get total() {
    return this.events.length;
  }

  /** The event last applied (null at the start). */
  get current() {
    return this.index > 0 ? this.events[this.index - 1] : null;
  }

  /** Fold the first `k` events (incrementally when moving forward). */
  seek(k) {
    k = Math.max(0, Math.min(this.events.length, Math.round(k)));
    if (k < this.#applied) {
      this.#run = newRun(this.#runId);
      this.#applied = 0;
    }
    const events = this.events;
    for (let i = this.#applied; i < k; i++) applyEvent(this.#run, events[i]);
    this.#applied = k;
    this.index = k;
    this.#clock = k > 0 ? events[k - 1].ts : (events[0]?.ts ?? 0);
    this.view = snapshot(this.#run);
  }

  play() {
    if (!this.events.length) return;
    if (this.index >= this.events.length) this.seek(0);
    this.playing = true;
    this.#last = performance.now();
    const step = (now) => {
      if (!this.playing) return;
      const dt = Math.min(0.25, (now - this.#last) / 1000);
      this.#last = now;
      this.#advance(dt * this.speed);
      if (this.index >= this.events.length) {
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
    const events = this.events;
    let k = this.index;
    if (k >= events.length) return;
    // Skip silences: never wait more than MAX_GAP_S of replay time for the next event.
    const next = events[k].ts;
    if (next - this.#clock > MAX_GAP_S) this.#clock = next - MAX_GAP_S;
    this.#clock += seconds;
    while (k < events.length && events[k].ts <= this.#clock) k++;
    if (k !== this.index) {
      const clock = this.#clock;
      this.seek(k);
      this.#clock = clock;
    }
  }

  destroy() {
    this.pause();
  }
}
