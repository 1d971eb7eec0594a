// What a problem's suggestion would set, when it names a value: `LEAF: value` (the key's own
// last part), "the default is VALUE", or a failure's `suggested` value. Only plain YAML
// scalars and flat lists: anything else is advice for a person, not a button.

const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

/** A YAML flow scalar or flat list as a value, or undefined when it is not that simple. */
export function parseScalar(text) {
  const t = String(text).trim();
  if (t === '') return undefined;
  if (NUMBER.test(t)) return Number(t);
  if (/^(true|false)$/i.test(t)) return t.toLowerCase() === 'true';
  if (/^(null|~)$/i.test(t)) return null;
  if (t.startsWith('[') && t.endsWith(']')) {
    const inner = t.slice(1, -1).trim();
    if (!inner) return [];
    const items = inner.split(',').map(parseScalar);
    return items.some((v) => v === undefined || Array.isArray(v)) ? undefined : items;
  }
  if (/^'[^']*'$|^"[^"]*"$/.test(t)) return t.slice(1, -1);
  if (/^[\w./-]+$/.test(t)) return t;
  return undefined;
}

/** `{key, value}` the problem suggests setting, or null. */
export function suggestedEdit(problem) {
  const key = problem?.key;
  if (!key) return null;
  if (problem.suggested !== undefined && problem.suggested !== null) return { key, value: problem.suggested };
  const text = String(problem.suggestion ?? '').trim();
  const leaf = key.split('.').pop();
  let m = new RegExp(`^${leaf}\\s*:\\s*(.+)$`).exec(text);
  if (!m) m = /^(?:the default is|use|try)\s+(.+?)\.?$/i.exec(text);
  if (!m) return null;
  const value = parseScalar(m[1]);
  return value === undefined ? null : { key, value };
}
