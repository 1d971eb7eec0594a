// Editing a PyTC YAML file in place: set `SECTION.KEY` (or `SECTION.SUB.KEY`) to a value
// while keeping the user's order, comments and everything else byte for byte. The wizard's
// sliders write through this, so the YAML a researcher takes away is their own file plus
// exactly the changes they made. Parsing and validation stay on the server.

const PLAIN = /^[A-Za-z0-9_./@*+-][A-Za-z0-9_./@*+\- ]*$/;
const LOOKS_SPECIAL =
  /^(?:[-+]?(?:\d[\d_]*)?(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)|true|True|TRUE|false|False|FALSE|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF|null|Null|NULL|~|y|Y|n|N)$/;

/** A float PyYAML reads back as a float (it needs a dot in the mantissa: `1.0e-05`). */
export function formatFloat(x) {
  if (!Number.isFinite(x)) return x > 0 ? '.inf' : x < 0 ? '-.inf' : '.nan';
  let s = String(x);
  if (/e/i.test(s)) {
    const [m, e] = s.split(/e/i);
    s = `${m.includes('.') ? m : `${m}.0`}e${e}`;
  }
  return s;
}

/** A JS value as a YAML flow scalar or list, PyTC style (True/False, None). */
export function formatValue(v, hint) {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) return formatFloat(v);
    return hint === 'float' ? `${v}.0` : String(v);
  }
  if (Array.isArray(v)) return `[${v.map((x) => formatValue(x)).join(', ')}]`;
  const s = String(v);
  if (s !== '' && PLAIN.test(s) && !LOOKS_SPECIAL.test(s) && !/\s$/.test(s) && !s.includes(': ') && !s.includes(' #')) return s;
  return `'${s.replace(/'/g, "''")}'`;
}

const indentOf = (line) => line.length - line.trimStart().length;
const isBlank = (line) => /^\s*(#.*)?$/.test(line);
const keyRe = (key) => new RegExp(`^(\\s*)${key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s*:(?=\\s|$)(.*)$`);

/** The end (exclusive) of the block that belongs to the key on line `i`. */
function blockEnd(lines, i) {
  const base = indentOf(lines[i]);
  let end = i + 1;
  let lastContent = i;
  for (; end < lines.length; end++) {
    const line = lines[end];
    if (isBlank(line)) continue;
    if (indentOf(line) <= base && !(indentOf(line) === base && line.trimStart().startsWith('- '))) break;
    lastContent = end;
  }
  return lastContent + 1;
}

/** Split `VALUE  # comment` into the value and the comment (with its leading spaces). */
function splitComment(rest) {
  let quote = null;
  for (let i = 0; i < rest.length; i++) {
    const c = rest[i];
    if (quote) {
      if (c === quote) quote = null;
    } else if (c === "'" || c === '"') quote = c;
    else if (c === '#' && (i === 0 || /\s/.test(rest[i - 1]))) {
      let j = i;
      while (j > 0 && /\s/.test(rest[j - 1])) j--;
      return [rest.slice(0, j), rest.slice(j)];
    }
  }
  return [rest, ''];
}

/** Find `key` as a direct child within lines [from, to) at the block's child indent. */
function findChild(lines, from, to, key) {
  let childIndent = null;
  const re = keyRe(key);
  for (let i = from; i < to; i++) {
    if (isBlank(lines[i])) continue;
    const ind = indentOf(lines[i]);
    if (childIndent === null) childIndent = ind;
    if (ind !== childIndent) continue;
    const m = re.exec(lines[i]);
    if (m) return { index: i, indent: ind, rest: m[2] };
  }
  return { index: -1, indent: childIndent };
}

/** Split flow-collection text at top-level commas, respecting quotes and nesting. */
function splitTop(text, sep = ',') {
  const parts = [];
  let depth = 0;
  let quote = null;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === quote) quote = null;
      continue;
    }
    if (c === "'" || c === '"') quote = c;
    else if (c === '[' || c === '{') depth++;
    else if (c === ']' || c === '}') depth--;
    else if (c === sep && depth === 0) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts;
}

/** `{A: 1, B: [2, 3]}` -> [['A', '1'], ['B', '[2, 3]']]; null if it is not that simple. */
export function parseFlowMapping(text) {
  const t = text.trim();
  if (!t.startsWith('{') || !t.endsWith('}') || t.includes('#')) return null;
  const inner = t.slice(1, -1).trim();
  if (!inner) return [];
  const out = [];
  for (const item of splitTop(inner)) {
    if (!item.trim()) continue;
    const m = /^\s*([A-Za-z_][\w]*)\s*:(?:\s+|$)([\s\S]*)$/.exec(item);
    if (!m) return null;
    out.push([m[1], m[2].trim().replace(/\s*\n\s*/g, ' ')]);
  }
  return out;
}

/** Where a flow collection starting on line `i` ends (exclusive), or -1 if it never closes. */
function flowEnd(lines, i, startCol) {
  let depth = 0;
  let quote = null;
  for (let j = i; j < lines.length; j++) {
    const line = j === i ? lines[j].slice(startCol) : lines[j];
    for (const c of line) {
      if (quote) {
        if (c === quote) quote = null;
      } else if (c === "'" || c === '"') quote = c;
      else if (c === '{' || c === '[') depth++;
      else if (c === '}' || c === ']') {
        depth--;
        if (depth === 0) return j + 1;
      }
    }
  }
  return -1;
}

const BOOL = /^(true|True|TRUE|false|False|FALSE)$/;

/**
 * `text` with `path` (dotted) set to `value`. A section written in flow style
 * (`SOLVER: {NAME: Adam, BASE_LR: 0.002}`) is rewritten in block style first, and a bare
 * boolean standing for a section (`ROTATE: True`) becomes `ROTATE:` / `  ENABLED: True`, as
 * PyTC reads them. Returns null when the file writes that part in a shape this editor does
 * not rewrite; the caller falls back to a `KEY VALUE` override.
 */
export function setKey(text, path, value, hint) {
  const parts = path.split('.');
  const newline = text.includes('\r\n') ? '\r\n' : '\n';
  const lines = text.length ? text.split(/\r?\n/) : [];
  const hadFinalNewline = text.endsWith('\n');
  if (hadFinalNewline) lines.pop();
  const formatted = formatValue(value, hint);

  let from = 0;
  let to = lines.length;
  let parentIndent = -2; // top level
  for (let depth = 0; depth < parts.length; depth++) {
    const key = parts[depth];
    const last = depth === parts.length - 1;
    const found = findChild(lines, from, to, key);
    if (found.index < 0) {
      // Insert the missing rest of the path after the block's last line.
      const indent = found.indent ?? parentIndent + 2;
      const unit = depth === 0 ? 2 : Math.max(2, indent - parentIndent);
      const inserted = [];
      for (let k = depth; k < parts.length; k++) {
        const pad = ' '.repeat(indent + (k - depth) * unit);
        inserted.push(k === parts.length - 1 ? `${pad}${parts[k]}: ${formatted}` : `${pad}${parts[k]}:`);
      }
      let at = to;
      while (at > from && isBlank(lines[at - 1]) && depth > 0) at--;
      lines.splice(at, 0, ...inserted);
      return finish(lines, newline, hadFinalNewline || lines.length > 0);
    }
    const [valuePart, comment] = splitComment(found.rest);
    const inline = valuePart.trim();
    const pad = ' '.repeat(found.indent);
    if (last) {
      const end = blockEnd(lines, found.index);
      // Keep an anchor (`&id001 [1, 128, 128]`): an alias elsewhere may refer to it.
      const anchor = /^(&[\w-]+)(\s|$)/.exec(inline)?.[1];
      lines.splice(found.index, end - found.index, `${pad}${key}: ${anchor ? `${anchor} ` : ''}${formatted}${comment}`);
      return finish(lines, newline, hadFinalNewline);
    }
    if (inline.startsWith('{')) {
      const col = lines[found.index].indexOf('{', found.indent + key.length);
      const end = flowEnd(lines, found.index, col);
      if (end < 0) return null;
      const flow = [lines[found.index].slice(col), ...lines.slice(found.index + 1, end)].join('\n');
      const entries = parseFlowMapping(flow.replace(/\s+$/, ''));
      if (entries === null) return null;
      const child = ' '.repeat(found.indent + 2);
      lines.splice(found.index, end - found.index, `${pad}${key}:`, ...entries.map(([k, v]) => `${child}${k}: ${v}`));
    } else if (BOOL.test(inline)) {
      lines.splice(found.index, 1, `${pad}${key}:${comment}`, `${pad}  ENABLED: ${inline}`);
    } else if (inline !== '') {
      return null; // a scalar where a section is needed
    }
    parentIndent = found.indent;
    from = found.index + 1;
    to = blockEnd(lines, found.index);
  }
  return null;
}

function finish(lines, newline, finalNewline) {
  return lines.join(newline) + (finalNewline ? newline : '');
}

/** Apply several `{path: value}` edits in order; paths that cannot be written are returned. */
export function applyEdits(text, edits, hints = {}) {
  let out = text;
  const overrides = [];
  for (const [path, value] of Object.entries(edits)) {
    const next = setKey(out, path, value, hints[path]);
    if (next === null) overrides.push(path, formatValue(value, hints[path]));
    else out = next;
  }
  return { text: out, overrides };
}

/** The value at a dotted path of a nested object (server-resolved values), or undefined. */
export function getPath(values, path) {
  let cur = values;
  for (const part of path.split('.')) {
    if (cur === null || typeof cur !== 'object' || !(part in cur)) return undefined;
    cur = cur[part];
  }
  return cur;
}

/** The indentation of a new line typed after `before`: its line's own, one more after `KEY:`. */
export function newlineIndent(before) {
  const line = before.slice(before.lastIndexOf('\n') + 1);
  const indent = /^ */.exec(line)[0];
  const code = splitComment(line)[0].trimEnd();
  return indent + (/:$/.test(code) ? '  ' : '');
}
