import { describe, it, expect, beforeEach, afterEach, vi } from 'vitest';
import { Connection } from './connection.svelte.js';

// A scripted stand-in for the browser WebSocket.
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  open(lastSeq = 0) {
    this.readyState = 1;
    this.receive({ type: 'hello', version: '0.1.0', last_seq: lastSeq, heartbeat_s: 15 });
  }
  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  send(text) {
    const frame = JSON.parse(text);
    this.sent.push(frame);
    // The server acknowledges every subscribe before sending its events.
    if (frame.type === 'subscribe' && this.autoAck !== false) {
      this.receive({ type: 'subscribed', run_id: frame.run_id, after: frame.after });
    }
  }
  close(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code });
  }
  frames(type) {
    return this.sent.filter((f) => f.type === type);
  }
}

function ev(seq, version, type, data = {}, runId = 'r1') {
  return { seq, run_id: runId, version, type, ts: 1000 + seq, data };
}

const history = [
  ev(1, 1, 'created', { name: 'demo', total_iterations: 10 }),
  ev(2, 2, 'started', { attempt: 1 }),
  ...Array.from({ length: 8 }, (_, i) => ev(3 + i, 3 + i, 'metric', { iteration: i + 1, loss: 1 / (i + 1), lr: 0.1 })),
];

beforeEach(() => {
  FakeSocket.all = [];
  vi.useFakeTimers();
  globalThis.WebSocket = FakeSocket;
  globalThis.fetch = vi.fn(async (url) => {
    const body = String(url).startsWith('api/runs/') ? { run: { run_id: 'r1', state: 'Training', legal_commands: ['stop'] }, created: {} } : String(url).startsWith('api/runs') ? { runs: [] } : { status: 'ok', gpus: 0 };
    return { ok: true, status: 200, text: async () => JSON.stringify(body) };
  });
});
afterEach(() => {
  vi.useRealTimers();
});

describe('the connection', () => {
  it('subscribes to a run from its last folded seq, and after a reconnect never folds a point twice', async () => {
    const conn = new Connection({ url: 'ws://test/ws' });
    conn.watchRun('r1');
    conn.start();
    const s1 = FakeSocket.all[0];
    s1.open(10);
    await vi.advanceTimersByTimeAsync(0); // the run page first: this server has none
    expect(s1.frames('subscribe')).toEqual([{ type: 'subscribe', run_id: 'r1', after: 0 }]);
    s1.receive({ type: 'events', events: history.slice(0, 6) });
    s1.receive({ type: 'caught_up', seq: 6 });
    expect(conn.status).toBe('live');

    // The link drops: the banner state, then a reconnect with backoff.
    s1.close(1006);
    expect(conn.status).toBe('reconnecting');
    await vi.advanceTimersByTimeAsync(400);
    const s2 = FakeSocket.all[1];
    expect(s2).toBeDefined();
    s2.open(10);
    expect(s2.frames('subscribe')).toEqual([{ type: 'subscribe', run_id: 'r1', after: 6 }]);
    // A server that resends some of what we had (overlap) must not duplicate points.
    s2.receive({ type: 'events', events: history.slice(3) });
    await vi.advanceTimersByTimeAsync(200);
    const run = conn.foldedRun('r1');
    expect(run.metrics.iteration).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(run.lastSeq).toBe(10);
    expect(conn.views.r1.metrics.iteration.length).toBe(8);
    conn.stop();
  });

  it('ignores events and caught_up of a subscription it has replaced, until the new one is acknowledged', async () => {
    const conn = new Connection({ url: 'ws://test/ws' });
    conn.watchAll();
    conn.start();
    const s = FakeSocket.all[0];
    s.open(0);
    s.autoAck = false;
    conn.watchRun('r1');
    // Still in flight from the all-runs subscription: not folded, not "caught up".
    s.receive({ type: 'events', events: history.slice(2, 4) });
    s.receive({ type: 'caught_up', seq: 4 });
    expect(conn.caughtUp).toBeNull();
    await vi.advanceTimersByTimeAsync(0); // the run page fetched (none here): subscribed
    s.receive({ type: 'events', events: history.slice(2, 4) });
    s.receive({ type: 'caught_up', seq: 4 });
    expect(conn.caughtUp).toBeNull();
    s.receive({ type: 'subscribed', run_id: 'r1', after: 0 });
    s.receive({ type: 'events', events: history.slice(0, 4) });
    s.receive({ type: 'caught_up', seq: 4 });
    expect(conn.caughtUp).toBe('r1');
    expect(conn.foldedRun('r1').metrics.iteration).toEqual([1, 2]);
    expect(conn.foldedRun('r1').problems).toEqual([]);
    conn.stop();
  });

  it('a refused subscribe (unknown run) counts as answered', async () => {
    const conn = new Connection({ url: 'ws://test/ws' });
    conn.start();
    const s = FakeSocket.all[0];
    s.autoAck = false;
    conn.watchRun('nope');
    s.open(0);
    await vi.advanceTimersByTimeAsync(0);
    s.receive({ type: 'error', error: { code: 'not_found', message: 'no run', details: { frame_type: 'subscribe' } } });
    conn.watchRun('r1');
    await vi.advanceTimersByTimeAsync(0);
    s.receive({ type: 'subscribed', run_id: 'r1', after: 0 });
    s.receive({ type: 'events', events: history.slice(0, 2) });
    expect(conn.foldedRun('r1').state).toBe('Training');
    conn.stop();
  });

  it('opens a run from its run page, then subscribes after the page seq', async () => {
    const page = {
      run_id: 'r1',
      seq: 5000,
      version: 4000,
      series: { loss: { count: 3990, buckets: [[1, 3990, 7, 0.1, 2, 5.0, 3990]] } },
      events: history.slice(0, 2),
    };
    globalThis.fetch = vi.fn(async (url) => {
      const body = String(url).endsWith('/page')
        ? { run: { run_id: 'r1', state: 'Training', iteration: 3990 }, page }
        : { run: { run_id: 'r1', state: 'Training', legal_commands: ['stop'] }, created: {} };
      return { ok: true, status: 200, text: async () => JSON.stringify(body) };
    });
    const conn = new Connection({ url: 'ws://test/ws' });
    conn.watchRun('r1');
    conn.start();
    const s = FakeSocket.all[0];
    s.open(5000);
    s.receive({ type: 'events', events: history.slice(0, 3) }); // before the page: not folded
    await vi.advanceTimersByTimeAsync(0);
    expect(s.frames('subscribe')).toEqual([{ type: 'subscribe', run_id: 'r1', after: 5000 }]);
    s.receive({ type: 'events', events: [ev(5001, 4001, 'metric', { iteration: 3991, loss: 0.09 })] });
    s.receive({ type: 'caught_up', seq: 5001 });
    const run = conn.foldedRun('r1');
    expect(run.metrics.iteration).toEqual([2, 7, 3991]);
    expect(run.metrics.loss).toEqual([5.0, 0.1, 0.09]);
    expect([run.state, run.version, run.iteration]).toEqual(['Training', 4001, 3991]);
    expect(conn.caughtUp).toBe('r1');
    conn.stop();
  });

  it('answers heartbeat pings and measures the clock skew', () => {
    const conn = new Connection({ url: 'ws://test/ws' });
    conn.start();
    const s = FakeSocket.all[0];
    s.open(0);
    s.receive({ type: 'ping', ts: Date.now() / 1000 + 5 });
    expect(s.frames('pong')).toHaveLength(1);
    expect(conn.clockSkew).toBeCloseTo(5, 0);
    conn.stop();
  });

  it('a silent link (no ping for 2.5 heartbeats) is dropped and reopened', async () => {
    const conn = new Connection({ url: 'ws://test/ws' });
    conn.start();
    FakeSocket.all[0].open(0);
    await vi.advanceTimersByTimeAsync(15 * 2500 + 3000);
    expect(conn.status === 'reconnecting' || FakeSocket.all.length > 1).toBe(true);
    conn.stop();
  });

  it('commands carry an id, are re-sent with the same id after a reconnect, and resolve on their result', async () => {
    const conn = new Connection({ url: 'ws://test/ws' });
    conn.start();
    const s1 = FakeSocket.all[0];
    s1.open(0);
    const p = conn.command('stop', 'r1');
    const [frame] = s1.frames('command');
    expect(frame).toMatchObject({ type: 'command', command: 'stop', run_id: 'r1' });
    expect(frame.id).toBeTruthy();
    s1.close(1006);
    await vi.advanceTimersByTimeAsync(400);
    const s2 = FakeSocket.all[1];
    s2.open(0);
    expect(s2.frames('command')).toEqual([frame]);
    s2.receive({ type: 'result', id: frame.id, ok: true, run: { run_id: 'r1', state: 'Training', stopping: true, legal_commands: [] }, event: {} });
    const res = await p;
    expect(res.ok).toBe(true);
    expect(conn.summaries.r1.legal_commands).toEqual([]);
    conn.stop();
  });

  it('a refused command rejects with the server error', async () => {
    const conn = new Connection({ url: 'ws://test/ws' });
    conn.start();
    const s = FakeSocket.all[0];
    s.open(0);
    const p = conn.command('resume', 'r1');
    const [frame] = s.frames('command');
    s.receive({ type: 'result', id: frame.id, ok: false, error: { code: 'illegal_command', message: 'not now', details: { state: 'Complete', legal_commands: [] } } });
    await expect(p).rejects.toMatchObject({ code: 'illegal_command', message: 'not now' });
    conn.stop();
  });

  it('watching all runs starts from the server seq and skips what it has seen', async () => {
    const conn = new Connection({ url: 'ws://test/ws' });
    conn.watchAll();
    conn.start();
    const s = FakeSocket.all[0];
    s.open(500);
    expect(s.frames('subscribe')).toEqual([{ type: 'subscribe', run_id: null, after: 500, sweeps: true }]);
    s.close(4408); // too slow: straight back, from the last seq processed
    await vi.advanceTimersByTimeAsync(400);
    const s2 = FakeSocket.all[1];
    s2.open(510);
    expect(s2.frames('subscribe')).toEqual([{ type: 'subscribe', run_id: null, after: 500, sweeps: true }]);
    conn.stop();
  });

  it('watching all runs notes each sweep event and each validation, and folds neither', async () => {
    const conn = new Connection({ url: 'ws://test/ws' });
    conn.watchAll();
    conn.start();
    const s = FakeSocket.all[0];
    s.open(0);
    s.receive({ type: 'caught_up', seq: 0 });
    conn.summaries = { r1: { run_id: 'r1', state: 'Training', best_dice: 0.5, legal_commands: ['stop'] } };
    s.receive({
      type: 'events',
      events: [
        ev(1, 3, 'trial_asked', { number: 0 }, 'sweep-abc'),
        ev(2, 7, 'validation', { iteration: 40, dice: 0.4 }),
        ev(3, 4, 'trial_told', { number: 0 }, 'sweep-abc'),
      ],
    });
    await vi.advanceTimersByTimeAsync(200);
    expect(conn.sweepVersions).toEqual({ 'sweep-abc': 4 });
    expect(conn.summaries['sweep-abc']).toBeUndefined();
    expect(conn.summaries.r1).toMatchObject({ last_validation: 40, best_dice: 0.5, version: 7 });
    expect(vi.mocked(fetch).mock.calls.map(([url]) => String(url)).filter((u) => u.includes('sweep-abc'))).toEqual([]);
    conn.stop();
  });

  it('stops retrying when the token is refused', () => {
    const conn = new Connection({ url: 'ws://test/ws' });
    conn.start();
    FakeSocket.all[0].close(4401);
    expect(conn.status).toBe('unauthorized');
    vi.advanceTimersByTime(10000);
    expect(FakeSocket.all).toHaveLength(1);
    conn.stop();
  });
});
