// Hash routing: #/wizard[/step], #/runs/ID, #/history, #/compare?a=ID&b=ID.

export function parseHash(hash) {
  const raw = (hash || '').replace(/^#\/?/, '');
  const [pathPart, queryPart = ''] = raw.split('?');
  const parts = pathPart.split('/').filter(Boolean).map(decodeURIComponent);
  const query = Object.fromEntries(new URLSearchParams(queryPart));
  const [head, ...rest] = parts;
  if (head === 'wizard') return { name: 'wizard', step: rest[0] ? Number(rest[0]) : null, query };
  if (head === 'runs' && rest[0]) return { name: 'run', runId: rest[0], query };
  if (head === 'history') return { name: 'history', query };
  if (head === 'compare') return { name: 'compare', a: query.a ?? null, b: query.b ?? null, query };
  return { name: 'home', query };
}

export function href(name, params = {}) {
  switch (name) {
    case 'wizard':
      return params.step ? `#/wizard/${params.step}` : '#/wizard';
    case 'run':
      return `#/runs/${encodeURIComponent(params.runId)}${params.replay ? '?replay=1' : ''}`;
    case 'history':
      return '#/history';
    case 'compare': {
      const q = new URLSearchParams();
      if (params.a) q.set('a', params.a);
      if (params.b) q.set('b', params.b);
      return `#/compare?${q}`;
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
