// The lifecycle diagram's Mermaid text (backend/fsm/machine.py to_mermaid) read into edges.
import { TRANSITIONS } from './fold.js';

/** `{edges: [{from, to, label}], current}` from `stateDiagram-v2` text. */
export function parseMermaid(text) {
  const edges = [];
  let current = null;
  for (const raw of String(text).split('\n')) {
    const line = raw.trim();
    const m = /^(\[\*\]|[A-Za-z_][\w]*)\s*-->\s*(\[\*\]|[A-Za-z_][\w]*)\s*(?::\s*(.*))?$/.exec(line);
    if (m) {
      edges.push({ from: m[1], to: m[2], label: (m[3] ?? '').trim() });
      continue;
    }
    const c = /^class\s+([A-Za-z_]\w*)\s+current\b/.exec(line);
    if (c) current = c[1];
  }
  return { edges, current };
}

/** The transitions the client mirrors, as edges (used when the server's text is not there). */
export const FALLBACK_EDGES = [
  { from: '[*]', to: 'Idle', label: 'create' },
  ...Object.entries(TRANSITIONS).flatMap(([trigger, [sources, dest]]) =>
    dest === null
      ? trigger === 'stop_requested'
        ? [{ from: 'Training', to: 'Training', label: 'stop_requested (stopping)' }]
        : []
      : sources.map((s) => ({ from: s, to: dest, label: trigger })),
  ),
  { from: 'Complete', to: '[*]', label: '' },
];
