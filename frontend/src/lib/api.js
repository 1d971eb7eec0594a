// REST calls (docs/protocol.md). The access token lives in the server's HttpOnly cookie, set
// when the page was first opened with ?token=; every call sends it with credentials
// 'same-origin'. Paths are relative so the app also works behind a path prefix.

export class ApiError extends Error {
  constructor(status, body) {
    const err = body?.error ?? {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || (status === 0 ? 'network' : `http_${status}`);
    this.details = err.details ?? {};
  }
}

const listeners = new Set();
/** Be told about every 401 (the banner asks for the token). */
export function onUnauthorized(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function apiUrl(path, query) {
  const q = query
    ? '?' +
      Object.entries(query)
        .filter(([, v]) => v !== undefined && v !== null)
        .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
        .join('&')
    : '';
  return `api/${path.replace(/^\/+/, '')}${q === '?' ? '' : q}`;
}

export async function api(path, { method = 'GET', body, query, signal, form } = {}) {
  let res;
  try {
    res = await fetch(apiUrl(path, query), {
      method,
      credentials: 'same-origin',
      headers: body !== undefined ? { 'Content-Type': 'application/json' } : undefined,
      body: form ?? (body !== undefined ? JSON.stringify(body) : undefined),
      signal,
    });
  } catch (e) {
    if (e?.name === 'AbortError') throw e;
    throw new ApiError(0, { error: { code: 'network', message: 'The server cannot be reached.' } });
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    if (res.status === 401) listeners.forEach((fn) => fn());
    throw new ApiError(res.status, data);
  }
  return data;
}

export const get = (path, query, opts = {}) => api(path, { ...opts, query });
export const post = (path, body, opts = {}) => api(path, { ...opts, method: 'POST', body });

/** Every event of a run (paged GET /api/runs/{id}/events), after `after`. */
export async function fetchRunEvents(runId, { after = 0, onPage, signal } = {}) {
  const events = [];
  let cursor = after;
  for (;;) {
    const page = await get(`runs/${runId}/events`, { after: cursor, limit: 10000 }, { signal });
    events.push(...page.events);
    onPage?.(events.length);
    if (!page.more || page.events.length === 0) break;
    cursor = page.next_after ?? page.events[page.events.length - 1].seq;
  }
  return events;
}

export const artifactUrl = (runId, path) => apiUrl(`runs/${runId}/artifact`, { path });
export const exportUrl = (runId, format) => apiUrl(`runs/${runId}/export`, { format });
export const thumbnailUrl = (path, z) => apiUrl('files/thumbnail', { path, z });
