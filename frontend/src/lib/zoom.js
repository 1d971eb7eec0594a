// A chart's zoomed window, fetched at full resolution: when the user drags over a chart,
// the series are asked for again over that x range only (GET /api/runs/{id}/series?from=
// &to=&points=), so a zoom into a long run shows its real points, min/max preserved,
// instead of magnified overview buckets. Answers that arrive after a newer zoom (or a
// reset) are dropped: the chart always shows the latest request's window.

export const MIN_POINTS = 16;
export const MAX_POINTS = 4096;

/** The request for a zoom of [min, max] on a plot `width` px wide (iterations are integers). */
export function windowRequest([min, max], width) {
  const from = Math.max(0, Math.floor(Math.min(min, max)));
  const to = Math.max(from, Math.ceil(Math.max(min, max)));
  const points = Math.max(MIN_POINTS, Math.min(MAX_POINTS, Math.round(width || 600)));
  return { from, to, points };
}

/**
 * One chart's zoom state. `fetchSeries(name, {from, to, points})` answers the server's
 * `{buckets, level, from_log}`; `set(range, width)` resolves to the window's columns
 * (`{iteration, [name]: values}`, as `buckets.columns`), or null when it was superseded
 * or reset.
 */
export class ZoomWindow {
  #fetch;
  #names;
  #columns;
  #ticket = 0;
  range = null;
  data = null;
  exact = false; // every point of the window is drawn (level 0 throughout)

  constructor(fetchSeries, names, columns) {
    this.#fetch = fetchSeries;
    this.#names = names;
    this.#columns = columns;
  }

  async set(range, width) {
    const ticket = ++this.#ticket;
    if (!range) return this.reset();
    const request = windowRequest(range, width);
    const answers = await Promise.all(this.#names.map((name) => this.#fetch(name, request)));
    if (ticket !== this.#ticket) return null; // a newer zoom or a reset came meanwhile
    this.range = [request.from, request.to];
    this.data = this.#columns(Object.fromEntries(this.#names.map((n, i) => [n, answers[i].buckets])));
    this.exact = answers.every((a) => a.level === 0);
    return this.data;
  }

  reset() {
    this.#ticket++;
    this.range = null;
    this.data = null;
    this.exact = false;
    return null;
  }
}
