import { describe, it, expect } from 'vitest';
import { ZoomWindow, windowRequest, MAX_POINTS } from './zoom.js';
import { columns } from './buckets.js';

const pt = (x, y, v = x) => [x, x, x, y, x, y, 1, v, v];

describe('windowRequest', () => {
  it.each([
    [[10.4, 99.2], 800, { from: 10, to: 100, points: 800 }],
    [[99.2, 10.4], 800, { from: 10, to: 100, points: 800 }], // a drag to the left
    [[-5, 3.5], 5, { from: 0, to: 4, points: 16 }], // before iteration 0, a tiny plot
    [[7, 7], 99999, { from: 7, to: 7, points: MAX_POINTS }],
  ])('%j on %d px asks for %j', (range, width, want) => {
    expect(windowRequest(range, width)).toEqual(want);
  });
});

// A fake server that answers each request when told to, so the test controls the order.
function server() {
  const pending = [];
  const asked = [];
  const fetchSeries = (name, req) => {
    asked.push([name, req]);
    return new Promise((resolve) => pending.push({ name, req, resolve }));
  };
  const answerAll = (level = 0) => {
    for (const p of pending.splice(0)) {
      const buckets = [];
      for (let x = p.req.from; x <= p.req.to; x++) buckets.push(pt(x, p.name === 'loss' ? 1 / (x + 1) : 0.1));
      p.resolve({ buckets, level, from_log: level === 0 });
    }
  };
  return { fetchSeries, asked, pending, answerAll };
}

describe('ZoomWindow', () => {
  it('fetches every series over the window and joins them on x', async () => {
    const s = server();
    const zoom = new ZoomWindow(s.fetchSeries, ['loss', 'lr'], columns);
    const done = zoom.set([100.5, 104.2], 640);
    expect(s.asked).toEqual([
      ['loss', { from: 100, to: 105, points: 640 }],
      ['lr', { from: 100, to: 105, points: 640 }],
    ]);
    s.answerAll();
    const data = await done;
    expect(data.iteration).toEqual([100, 101, 102, 103, 104, 105]);
    expect(data.loss[0]).toBeCloseTo(1 / 101);
    expect(data.lr).toEqual([0.1, 0.1, 0.1, 0.1, 0.1, 0.1]);
    expect(zoom.range).toEqual([100, 105]);
    expect(zoom.exact).toBe(true);
  });

  it('drops an answer that a newer zoom overtook', async () => {
    const s = server();
    const zoom = new ZoomWindow(s.fetchSeries, ['loss'], columns);
    const first = zoom.set([0, 50], 600);
    const [stale] = s.pending.splice(0);
    const second = zoom.set([10, 20], 600);
    s.answerAll();
    expect((await second).iteration[0]).toBe(10);
    stale.resolve({ buckets: [pt(0, 9)], level: 0 });
    expect(await first).toBeNull();
    expect(zoom.range).toEqual([10, 20]); // still the newer window
  });

  it('a reset wins over an answer still on its way', async () => {
    const s = server();
    const zoom = new ZoomWindow(s.fetchSeries, ['loss'], columns);
    const pending = zoom.set([0, 50], 600);
    zoom.set(null, 600);
    s.answerAll();
    expect(await pending).toBeNull();
    expect([zoom.range, zoom.data]).toEqual([null, null]);
  });

  it('says when the window is not at full resolution', async () => {
    const s = server();
    const zoom = new ZoomWindow(s.fetchSeries, ['loss'], columns);
    const done = zoom.set([0, 9], 600);
    s.answerAll(3);
    await done;
    expect(zoom.exact).toBe(false);
  });
});
