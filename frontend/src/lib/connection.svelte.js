// The one owner of the WebSocket (docs/protocol.md): hello, subscribe from the last seq,
// event batches, caught_up, heartbeat pong, reconnect with backoff and resubscribe, command
// frames awaiting their result. Events are folded (lib/fold.js) into per-run state;
// components read `views` and `summaries` and never touch the socket.
//
// A new subscribe replaces the previous one, but frames of the previous one may still be on
// their way: `events` and `caught_up` count only once the server has acknowledged every
// subscribe sent on this socket (`subscribed`, or an error frame refusing it).
//
// Subscriptions: the run page watches one run (subscribe {run_id, after: that run's last
// folded seq}); the other pages watch all runs and sweeps from the server's last seq at
// connect time, to keep the runs table and a sweep page live (a sweep's events only bump
// `sweepVersions`). Folded runs are de-duplicated by seq and version, so a
// resend after a reconnect never adds a point twice, and a version gap is never folded over.

import { applyEvent, newRun, seedFromPage, snapshot, LIFECYCLE_TYPES } from './fold.js';
import { ApiError, get, post, onUnauthorized } from './api.js';

const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000];
// Events after which the queue (GET /api/queue) is fetched again.
const QUEUE_CHANGES = new Set(['queued', 'queue_moved', 'dequeued', 'started', 'resumed', 'completed', 'stopped', 'failed', 'deleted']);
const COMMAND_TIMEOUT_MS = 20000;
const SWEEP_PREFIX = 'sweep-'; // a sweep's stream id (backend/experiments/sweeps.py)
const KEEP_FOLDED_RUNS = 8;

export const CLOSE_UNAUTHORIZED = 4401;
export const CLOSE_FORBIDDEN = 4403;
export const CLOSE_TOO_SLOW = 4408;

function randomId() {
  const a = new Uint8Array(6);
  crypto.getRandomValues(a);
  return [...a].map((b) => b.toString(16).padStart(2, '0')).join('');
}

export class Connection {
  /** 'connecting' | 'catching-up' | 'live' | 'reconnecting' | 'unauthorized' | 'forbidden' */
  status = $state('connecting');
  /** Seconds until the next reconnect attempt while reconnecting. */
  retryAt = $state(0);
  /** Times the socket has (re)opened; views use it to refetch what REST gave them. */
  sessions = $state(0);
  health = $state.raw(null);
  /** run_id -> the server's run summary (legal_commands decide every button). */
  summaries = $state.raw({});
  listLoaded = $state(false);
  /** run_id -> a snapshot of the folded run; a new object whenever the run changed. */
  views = $state.raw({});
  /** run_id -> data of its created event (source config for "fix and retry"). */
  created = $state.raw({});
  /** Highest seq the server had when the socket last said hello. */
  serverSeq = $state(0);
  /** run_id whose subscription has caught up with the stored history. */
  caughtUp = $state(null);
  /** GET /api/queue: {slots: [{index, devices, run_id}], queued: [run ids in order]}. */
  queue = $state.raw({ slots: [], queued: [] });
  /** sweep_id -> the version of its stream last seen live (a sweep page reloads on it). */
  sweepVersions = $state.raw({});

  #ws = null;
  #subsSent = 0;
  #subsAcked = 0;
  #token = null;
  #clientId = randomId();
  #counter = 0;
  #pending = new Map();
  #runs = new Map();
  #stale = new Set();
  #sub = { mode: 'none', runId: null };
  #cursor = 0; // all-runs subscription: highest seq seen
  #attempt = 0;
  #retryTimer = null;
  #watchdog = null;
  #lastFrameAt = 0;
  #heartbeatS = 15;
  #flushTimer = null;
  #dirty = new Set();
  #refreshTimers = new Map();
  #listTimer = null;
  #stopped = false;
  clockSkew = 0; // server time - client time, seconds (from heartbeat pings)

  constructor({ token = null, url = null } = {}) {
    this.#token = token;
    this.url = url;
    onUnauthorized(() => {
      this.status = 'unauthorized';
    });
  }

  // ------------------------------------------------------------------ lifecycle

  start() {
    this.#stopped = false;
    this.#open();
    this.#watchdog = setInterval(() => this.#checkAlive(), 1000);
    if (typeof document !== 'undefined') {
      document.addEventListener('visibilitychange', () => {
        if (!document.hidden) this.#checkAlive(true);
      });
    }
    if (typeof window !== 'undefined') window.addEventListener('online', () => this.reconnectNow());
  }

  stop() {
    this.#stopped = true;
    clearInterval(this.#watchdog);
    clearTimeout(this.#retryTimer);
    this.#ws?.close();
  }

  /** Reconnect at once (the banner's button, the browser coming back online). */
  reconnectNow() {
    if (this.#ws && this.#ws.readyState <= 1 && this.status !== 'reconnecting') return;
    clearTimeout(this.#retryTimer);
    this.#attempt = 0;
    this.#open();
  }

  #wsUrl() {
    if (this.url) return this.url;
    const u = new URL('ws', window.location.href);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    u.hash = '';
    u.search = this.#token ? `?token=${encodeURIComponent(this.#token)}` : '';
    return u.toString();
  }

  #open() {
    if (this.#stopped) return;
    if (this.#ws) {
      this.#ws.onclose = null;
      this.#ws.onmessage = null;
      try {
        this.#ws.close();
      } catch {
        /* already closed */
      }
    }
    if (this.status !== 'connecting') this.status = 'reconnecting';
    let ws;
    try {
      ws = new WebSocket(this.#wsUrl());
    } catch {
      this.#scheduleReconnect();
      return;
    }
    this.#ws = ws;
    this.#subsSent = 0;
    this.#subsAcked = 0;
    this.#lastFrameAt = Date.now();
    ws.onmessage = (m) => this.#onFrame(m.data);
    ws.onclose = (e) => this.#onClose(e);
    ws.onerror = () => {};
  }

  #onClose(e) {
    this.#ws = null;
    if (this.#stopped) return;
    if (e.code === CLOSE_UNAUTHORIZED) {
      this.status = 'unauthorized';
      return;
    }
    if (e.code === CLOSE_FORBIDDEN) {
      this.status = 'forbidden';
      return;
    }
    this.status = 'reconnecting';
    this.caughtUp = null;
    // Told we were too slow: come straight back and resubscribe from the last seq.
    if (e.code === CLOSE_TOO_SLOW) this.#attempt = 0;
    this.#scheduleReconnect();
  }

  #scheduleReconnect() {
    clearTimeout(this.#retryTimer);
    const base = BACKOFF_MS[Math.min(this.#attempt, BACKOFF_MS.length - 1)];
    const delay = base * (0.75 + Math.random() * 0.5);
    this.#attempt += 1;
    this.retryAt = Date.now() + delay;
    this.#retryTimer = setTimeout(() => this.#open(), delay);
  }

  #checkAlive(now = false) {
    if (!this.#ws || this.#ws.readyState !== 1) return;
    const silentFor = Date.now() - this.#lastFrameAt;
    // No ping for 2.5 heartbeats (a laptop that slept, a dead link): start over.
    if (silentFor > this.#heartbeatS * 2500 + 2000 || (now && silentFor > this.#heartbeatS * 2500)) {
      const ws = this.#ws;
      ws.onclose = null;
      ws.close();
      this.#onClose({ code: 1006 });
    }
  }

  #send(frame) {
    if (this.#ws && this.#ws.readyState === 1) {
      if (frame.type === 'subscribe') this.#subsSent += 1;
      this.#ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  // ------------------------------------------------------------------ frames

  #onFrame(raw) {
    this.#lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    // Left over from a subscription we have since replaced (or sent while a run page loads).
    const stale = this.#subsAcked < this.#subsSent || this.#seeding !== null;
    switch (frame.type) {
      case 'hello':
        this.#onHello(frame);
        break;
      case 'subscribed':
        this.#subsAcked += 1;
        break;
      case 'events':
        if (!stale) this.#onEvents(frame.events ?? []);
        break;
      case 'caught_up':
        if (stale) break;
        this.status = 'live';
        this.caughtUp = this.#sub.mode === 'run' ? this.#sub.runId : '*';
        if (this.#sub.mode === 'run') this.refreshRun(this.#sub.runId);
        break;
      case 'ping':
        if (typeof frame.ts === 'number') this.clockSkew = frame.ts - Date.now() / 1000;
        this.#send({ type: 'pong' });
        break;
      case 'result':
        this.#onResult(frame);
        break;
      case 'error':
        if (frame.error?.details?.frame_type === 'subscribe') this.#subsAcked += 1;
        console.warn('trainboard: server error frame', frame.error);
        break;
    }
  }

  #onHello(frame) {
    this.#attempt = 0;
    this.#heartbeatS = frame.heartbeat_s || 15;
    const serverSeq = frame.last_seq ?? 0;
    // A server with less history than we folded is a different database: start over.
    const known = Math.max(this.#cursor, ...[...this.#runs.values()].map((r) => r.lastSeq), 0);
    if (serverSeq < known) this.#reset();
    if (this.#sub.mode === 'all' && this.#cursor === 0) this.#cursor = serverSeq;
    this.serverSeq = serverSeq;
    this.status = 'catching-up';
    this.sessions += 1;
    this.#subscribe();
    // Commands that had no answer yet: the same id again, answered once by the server.
    for (const p of this.#pending.values()) this.#send(p.frame);
    this.refreshHealth();
    this.refreshRuns();
    this.refreshQueue();
  }

  #reset() {
    this.#runs.clear();
    this.#stale.clear();
    this.#cursor = 0;
    this.views = {};
    this.summaries = {};
    this.created = {};
  }

  #subscribe() {
    const sub = this.#sub;
    if (sub.mode === 'run') {
      const run = this.#run(sub.runId);
      if (run.lastSeq === 0) {
        this.#subscribeFromPage(sub.runId);
        return;
      }
      this.#stale.delete(sub.runId);
      this.#send({ type: 'subscribe', run_id: sub.runId, after: run.lastSeq });
    } else if (sub.mode === 'all') {
      this.#send({ type: 'subscribe', run_id: null, after: this.#cursor, sweeps: true });
    } else {
      this.#send({ type: 'unsubscribe' });
    }
  }

  // A run not folded yet: draw the server's run page (constant time, whatever the run's
  // length), then subscribe after its seq. An older server without pages: from the start.
  #seeding = null; // the run whose page is being fetched: its events wait for the subscribe

  async #subscribeFromPage(runId) {
    if (this.#seeding === runId) return; // already on its way (a reconnect meanwhile)
    this.#seeding = runId;
    let answer = null;
    try {
      answer = await get(`runs/${runId}/page`);
    } catch {
      answer = null;
    }
    if (this.#seeding === runId) this.#seeding = null;
    const sub = this.#sub;
    if (sub.mode !== 'run' || sub.runId !== runId) return; // the user moved on meanwhile
    const known = this.#runs.get(runId);
    if (answer?.page && (!known || known.lastSeq === 0)) {
      this.#runs.set(runId, seedFromPage(runId, answer.page, answer.run));
      this.#dirty.add(runId);
      this.#scheduleFlush();
    }
    this.#stale.delete(runId);
    this.#send({ type: 'subscribe', run_id: runId, after: this.#run(runId).lastSeq });
  }

  #run(runId) {
    let run = this.#runs.get(runId);
    if (!run) {
      run = newRun(runId);
      this.#runs.set(runId, run);
      this.#evict();
    }
    return run;
  }

  #evict() {
    if (this.#runs.size <= KEEP_FOLDED_RUNS) return;
    for (const id of this.#runs.keys()) {
      if (this.#runs.size <= KEEP_FOLDED_RUNS) break;
      if (id === this.#sub.runId) continue;
      this.#runs.delete(id);
      const { [id]: _, ...rest } = this.views;
      this.views = rest;
    }
  }

  #onEvents(events) {
    const sub = this.#sub;
    for (const e of events) {
      if (sub.mode === 'all') {
        if (e.seq <= this.#cursor) continue; // duplicate after a resubscribe
        this.#cursor = e.seq;
        if (e.run_id.startsWith(SWEEP_PREFIX)) {
          this.#pendingSweeps[e.run_id] = e.version; // a sweep's stream: noted, not folded
          continue;
        }
        this.#touchSummary(e);
        const run = this.#runs.get(e.run_id);
        if (!run || this.#stale.has(e.run_id)) continue;
        const r = applyEvent(run, e);
        if (r === 'gap') this.#stale.add(e.run_id); // filled when the run is watched again
        else if (r !== 'duplicate') this.#dirty.add(e.run_id);
      } else if (sub.mode === 'run') {
        if (e.run_id !== sub.runId || this.#seeding === e.run_id) continue;
        const run = this.#run(e.run_id);
        const r = applyEvent(run, e);
        if (r === 'gap') {
          // Never fold over missing events: ask again from what we have.
          this.#subscribe();
          break;
        }
        if (r !== 'duplicate') {
          this.#dirty.add(e.run_id);
          if (QUEUE_CHANGES.has(e.type)) this.#queueSoon();
          // Live: keep its summary (the top bar, the buttons) current too.
          if (this.caughtUp === sub.runId) this.#touchSummary(e);
        }
      }
    }
    this.#scheduleFlush();
  }

  // Keep the runs table live without folding every run: progress updates in place, lifecycle
  // changes refetch the server's summary (its legal_commands are the truth).
  #touchSummary(e) {
    if (QUEUE_CHANGES.has(e.type)) this.#queueSoon();
    const s = this.summaries[e.run_id];
    if (LIFECYCLE_TYPES.has(e.type) || !s) {
      this.#refreshSoon(e.run_id);
      return;
    }
    const d = e.data ?? {};
    let next = null;
    if (e.type === 'progress') {
      next = { ...s, iteration: d.iteration ?? s.iteration, total: d.total ?? s.total, its_per_s: d.its_per_s, eta_s: d.eta_s };
    } else if (e.type === 'metric') {
      next = { ...s, iteration: d.iteration ?? s.iteration, last_loss: d.loss ?? s.last_loss };
    } else if (e.type === 'validation') {
      // last_validation: live only (a sweep page redraws its trials' curves on it).
      next = { ...s, last_validation: d.iteration };
      if (typeof d.dice === 'number' && (s.best_dice == null || d.dice > s.best_dice)) {
        next.best_dice = d.dice;
        next.best_iteration = d.iteration;
      }
    }
    if (next) {
      next.last_seq = e.seq;
      next.version = e.version;
      this.#pendingSummaries[e.run_id] = next;
      this.#scheduleFlush();
    }
  }

  #pendingSummaries = {};
  #pendingSweeps = {};

  #scheduleFlush() {
    if (this.#flushTimer !== null) return;
    const flush = () => {
      this.#flushTimer = null;
      this.#flush();
    };
    if (typeof requestAnimationFrame !== 'undefined' && typeof document !== 'undefined' && !document.hidden) {
      this.#flushTimer = requestAnimationFrame(flush);
    } else {
      this.#flushTimer = setTimeout(flush, 100);
    }
  }

  #flush() {
    if (this.#dirty.size) {
      const views = { ...this.views };
      for (const id of this.#dirty) {
        const run = this.#runs.get(id);
        if (run) views[id] = snapshot(run);
      }
      this.#dirty.clear();
      this.views = views;
    }
    const ps = this.#pendingSummaries;
    if (Object.keys(ps).length) {
      this.#pendingSummaries = {};
      this.summaries = { ...this.summaries, ...ps };
    }
    const sweeps = this.#pendingSweeps;
    if (Object.keys(sweeps).length) {
      this.#pendingSweeps = {};
      this.sweepVersions = { ...this.sweepVersions, ...sweeps };
    }
  }

  // ------------------------------------------------------------------ subscriptions

  /** Follow one run: its whole history, then live. */
  watchRun(runId) {
    if (this.#sub.mode === 'run' && this.#sub.runId === runId) return;
    this.#sub = { mode: 'run', runId };
    this.caughtUp = null;
    const run = this.#run(runId);
    if (!this.views[runId]) this.views = { ...this.views, [runId]: snapshot(run) };
    if (this.status === 'live') this.status = 'catching-up';
    this.#subscribe();
    this.refreshRun(runId);
  }

  /** Follow every run from now on (the runs table, the wizard). */
  watchAll() {
    if (this.#sub.mode === 'all') return;
    this.#sub = { mode: 'all', runId: null };
    this.caughtUp = null;
    // From the newest seq we know: older events are in the summaries we fetch.
    const known = Math.max(this.serverSeq, ...[...this.#runs.values()].map((r) => r.lastSeq), 0);
    if (known > this.#cursor) this.#cursor = known;
    if (this.status === 'live') this.status = 'catching-up';
    this.#subscribe();
    this.refreshRuns();
  }

  // ------------------------------------------------------------------ REST-backed state

  async refreshHealth() {
    try {
      this.health = await get('health');
    } catch {
      /* the banner already says what is wrong */
    }
  }

  async refreshRuns() {
    clearTimeout(this.#listTimer);
    try {
      // Archived runs too: the runs table hides them itself ("Show archived").
      const { runs } = await get('runs', { archived: 1 });
      const next = {};
      for (const r of runs) next[r.run_id] = r;
      this.summaries = next;
      this.listLoaded = true;
    } catch {
      /* keep what we had */
    }
  }

  async refreshRun(runId) {
    try {
      const { run, created } = await get(`runs/${runId}`);
      this.summaries = { ...this.summaries, [runId]: run };
      if (created) this.created = { ...this.created, [runId]: created };
      return run;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        this.summaries = { ...this.summaries, [runId]: { run_id: runId, missing: true } };
      }
      return null;
    }
  }

  async refreshQueue() {
    try {
      const q = await get('queue');
      this.queue = { slots: q.slots ?? [], queued: q.queued ?? [] };
    } catch {
      /* an older server has no queue: keep the empty one */
    }
  }

  #queueTimer = null;
  #queueSoon() {
    if (this.#queueTimer !== null) return;
    this.#queueTimer = setTimeout(() => {
      this.#queueTimer = null;
      this.refreshQueue();
    }, 120);
  }

  #refreshSoon(runId) {
    if (this.#refreshTimers.has(runId)) return;
    this.#refreshTimers.set(
      runId,
      setTimeout(() => {
        this.#refreshTimers.delete(runId);
        this.refreshRun(runId);
      }, 120),
    );
  }

  setSummary(summary) {
    if (summary?.run_id) this.summaries = { ...this.summaries, [summary.run_id]: summary };
  }

  // ------------------------------------------------------------------ commands

  /**
   * Send a command (start, stop, resume, create) and wait for its result. Over the socket
   * when it is open, with a client-chosen id that is sent again after a reconnect (the
   * server answers a repeated id once); over REST otherwise. Resolves to the result frame
   * ({run, event}); rejects with an ApiError-like {code, message, details}.
   */
  command(command, runId, data = {}) {
    const id = `${this.#clientId}-${++this.#counter}`;
    const frame = { type: 'command', id, command, run_id: runId, data };
    if (!this.#ws || this.#ws.readyState !== 1) return this.#restCommand(command, runId, data, id);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new ApiError(0, { error: { code: 'timeout', message: 'No answer from the server yet; check the run state before trying again.' } }));
      }, COMMAND_TIMEOUT_MS);
      this.#pending.set(id, { frame, resolve, reject, timer });
      this.#send(frame);
    });
  }

  async #restCommand(command, runId, data, id) {
    const res =
      command === 'create'
        ? await post('runs', data)
        : await post(`runs/${runId}/${command}`, { ...data, id });
    this.setSummary(res.run);
    if (QUEUE_CHANGES.has(res.event?.type)) this.#queueSoon();
    return res;
  }

  #onResult(frame) {
    const p = this.#pending.get(frame.id);
    if (!p) return;
    this.#pending.delete(frame.id);
    clearTimeout(p.timer);
    if (frame.ok) {
      this.setSummary(frame.run);
      if (QUEUE_CHANGES.has(frame.event?.type)) this.#queueSoon();
      p.resolve(frame);
    } else {
      p.reject(new ApiError(409, { error: frame.error }));
    }
  }

  // ------------------------------------------------------------------ for tests and tools

  foldedRun(runId) {
    return this.#runs.get(runId) ?? null;
  }
}
