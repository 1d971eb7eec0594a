import { describe, it, expect, vi, beforeEach } from 'vitest';

// A stored run, served as the server would: created, started, 5,000 metrics (iteration =
// version - 2, one per second), completed. The page keeps the lifecycle events and the loss
// as buckets of 100 points; the events endpoint pages by version.
const TOTAL = 5003;
const ev = (version, type, data = {}) => ({ seq: 1000 + version, run_id: 'r', version, type, ts: 100 + version, data });
const EVENTS = [
  ev(1, 'created', { name: 'long', total_iterations: 5000 }),
  ev(2, 'started', { attempt: 1 }),
  ...Array.from({ length: 5000 }, (_, i) => ev(i + 3, 'metric', { iteration: i + 1, loss: 1 / (i + 1) })),
  ev(TOTAL, 'completed', { iteration: 5000 }),
];
function buckets() {
  const out = [];
  for (let first = 1; first <= 5000; first += 100) {
    const last = first + 99;
    out.push([first, last, last, 1 / last, first, 1 / first, 100, first + 2, last + 2, 100 + last + 2]);
  }
  return out;
}
const PAGE = {
  run_id: 'r',
  seq: 1000 + TOTAL,
  version: TOTAL,
  series: { loss: { buckets: buckets() }, lr: { buckets: [] }, val_loss: { buckets: [] }, dice: { buckets: [] }, iou: { buckets: [] } },
  events: [EVENTS[0], EVENTS[1], EVENTS[TOTAL - 1]],
};
const calls = [];
vi.mock('../lib/api.js', () => ({
  get: async (path, query) => {
    calls.push([path, query]);
    await new Promise((r) => setTimeout(r, 5));
    if (path === 'runs/r/page') return { run: { run_id: 'r', created_at: 101 }, page: PAGE };
    const from = query.after_version;
    return { events: EVENTS.slice(from, from + query.limit), more: from + query.limit < TOTAL };
  },
}));
const { Replay, pageView } = await import('./replay.svelte.js');

beforeEach(() => (calls.length = 0));

describe('pageView: the run as of a version, from the read model alone', () => {
  it.each([
    [0, null, 0],
    [2, 'Training', 0],
    [2602, 'Training', 2600], // the buckets complete by then
    [TOTAL, 'Complete', 5000],
  ])('at %d: %s, iteration %d', (k, state, iteration) => {
    const run = pageView('r', PAGE, k);
    expect([run.state, run.iteration]).toEqual([state, iteration]);
  });
});

describe('Replay', () => {
  it('loads the extent from the page and nothing else of the run', async () => {
    const replay = new Replay('r');
    await replay.load();
    expect(replay.total).toBe(TOTAL);
    expect(replay.runDuration).toBe(TOTAL - 2);
    expect(calls.map((c) => c[0])).toEqual(['runs/r/page']); // position 0 needs no events
  });

  it('scrubs anywhere: drawn at once from the page, exact once its window arrives', async () => {
    const replay = new Replay('r');
    await replay.load();
    const arrived = replay.seek(2650);
    expect(replay.view.iteration).toBe(2600); // at once, from the buckets
    await arrived;
    expect([replay.view.iteration, replay.view.state, replay.current.version]).toEqual([2648, 'Training', 2650]);
    expect(calls.at(-1)).toEqual(['runs/r/events', { after_version: 1650, limit: 2000 }]);
    await replay.seek(TOTAL);
    expect([replay.view.iteration, replay.view.state]).toEqual([5000, 'Complete']);
    await replay.seek(40); // back
    expect([replay.view.iteration, replay.view.state]).toEqual([38, 'Training']);
    expect(replay.view.metrics.iteration.at(-1)).toBe(38);
    await replay.seek(0);
    expect([replay.view.iteration, replay.view.state]).toEqual([0, null]);
  });

  it('a drag across the run asks for one window per round trip, and ends exact', async () => {
    const replay = new Replay('r');
    await replay.load();
    calls.length = 0;
    let last;
    for (let k = 0; k <= TOTAL; k += 50) last = replay.seek(k);
    await last;
    await replay.seek(4321);
    expect(replay.view.iteration).toBe(4319);
    expect(calls.length).toBeLessThanOrEqual(4);
    expect(calls.every(([, q]) => q.limit <= 2000)).toBe(true);
  });
});
