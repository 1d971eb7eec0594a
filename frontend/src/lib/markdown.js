// A small, safe Markdown renderer for run notes: the text is HTML-escaped first, so no
// markup of the author's reaches the page; only the constructs below become tags.
// Headings (#..###), paragraphs, bullet and numbered lists, fenced and inline code,
// **bold**, *italic*, and links whose target is http(s), mailto or a #/ route.

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
export const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ESCAPES[c]);

const SAFE_URL = /^(https?:\/\/|mailto:|#\/)/i;

// Inline markup over already-escaped text. Code spans are cut out first so their content
// stays literal.
function inline(escaped) {
  const codes = [];
  let s = escaped.replace(/`([^`]+)`/g, (_, code) => {
    codes.push(code);
    return `\u0000${codes.length - 1}\u0000`;
  });
  s = s
    .replace(/\*\*([^*]+)\*\*/g, '<strong>$1</strong>')
    .replace(/(^|[^*])\*([^*\s][^*]*)\*/g, '$1<em>$2</em>')
    .replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (whole, text, url) => {
      // The url is escaped text: &amp; stands for & and quotes cannot appear raw.
      const raw = url.replace(/&amp;/g, '&');
      if (!SAFE_URL.test(raw)) return whole;
      return `<a href="${url}" rel="noopener noreferrer" target="_blank">${text}</a>`;
    });
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${codes[Number(i)]}</code>`);
}

/** Markdown text → HTML that carries no markup of its own author. */
export function renderMarkdown(text) {
  const lines = escapeHtml(text ?? '').split(/\r?\n/);
  const out = [];
  let para = [];
  let listKind = null;
  const endPara = () => {
    if (para.length) out.push(`<p>${inline(para.join(' '))}</p>`);
    para = [];
  };
  const endList = () => {
    if (listKind) out.push(`</${listKind}>`);
    listKind = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (/^```/.test(line)) {
      endPara();
      endList();
      const body = [];
      for (i += 1; i < lines.length && !/^```/.test(lines[i]); i++) body.push(lines[i]);
      out.push(`<pre><code>${body.join('\n')}</code></pre>`);
      continue;
    }
    const heading = /^(#{1,3})\s+(.*)$/.exec(line);
    const bullet = /^\s*[-*]\s+(.*)$/.exec(line);
    const numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
    if (heading) {
      endPara();
      endList();
      const level = heading[1].length + 2; // notes sit under the page's own headings
      out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
    } else if (bullet || numbered) {
      endPara();
      const kind = bullet ? 'ul' : 'ol';
      if (listKind !== kind) {
        endList();
        out.push(`<${kind}>`);
        listKind = kind;
      }
      out.push(`<li>${inline((bullet ?? numbered)[1])}</li>`);
    } else if (line.trim() === '') {
      endPara();
      endList();
    } else {
      endList();
      para.push(line.trim());
    }
  }
  endPara();
  endList();
  return out.join('\n');
}
