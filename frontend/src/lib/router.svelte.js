// Hash routing: #/wizard[/step], #/runs/ID, #/history[?view] (the runs table; its query is
// the view, lib/runsView.js), #/sweeps, #/sweep/ID, #/compare?runs=A,B,C (or ?a=ID&b=ID).

export function parseHash(hash) {
  const raw = (hash || '').replace(/^#\/?/, '');
  const [pathPart, queryPart = ''] = raw.split('?');
  const parts = pathPart.split('/').filter(Boolean).map(decodeURIComponent);
  const query = Object.fromEntries(new URLSearchParams(queryPart));
  const [head, ...rest] = parts;
  if (head === 'wizard') return { name: 'wizard', step: rest[0] ? Number(rest[0]) : null, query };
  if (head === 'runs' && rest[0]) return { name: 'run', runId: rest[0], query };
  if (head === 'history') return { name: 'history', query };
  if (head === 'compare') {
    const runs = query.runs ? query.runs.split(',').filter(Boolean) : [query.a, query.b].filter(Boolean);
    return { name: 'compare', a: query.a ?? runs[0] ?? null, b: query.b ?? runs[1] ?? null, runs, query };
  }
  if (head === 'sweeps') return { name: 'sweeps', query };
  if (head === 'sweep' && rest[0]) return { name: 'sweep', sweepId: rest[0], query };
  return { name: 'home', query };
}

export function href(name, params = {}) {
  switch (name) {
    case 'wizard':
      return params.step ? `#/wizard/${params.step}` : '#/wizard';
    case 'run':
      return `#/runs/${encodeURIComponent(params.runId)}${params.replay ? '?replay=1' : ''}`;
    case 'history': {
      const q = new URLSearchParams(params.query ?? {}).toString();
      return q ? `#/history?${q}` : '#/history';
    }
    case 'sweeps':
      return '#/sweeps';
    case 'sweep':
      return `#/sweep/${encodeURIComponent(params.sweepId)}`;
    case 'compare': {
      const q = new URLSearchParams();
      if (params.runs) q.set('runs', params.runs.join(','));
      if (params.a) q.set('a', params.a);
      if (params.b) q.set('b', params.b);
      return `#/compare?${q.toString().replaceAll('%2C', ',')}`;
    }
    default:
      return '#/';
  }
}

class Router {
  route = $state(parseHash(typeof location !== 'undefined' ? location.hash : ''));
  constructor() {
    if (typeof window !== 'undefined') {
      window.addEventListener('hashchange', () => {
        this.route = parseHash(location.hash);
      });
    }
  }
  go(hash, { replace = false } = {}) {
    if (replace) {
      history.replaceState(null, '', hash);
      this.route = parseHash(hash);
    } else location.hash = hash;
  }
}

export const router = new Router();
