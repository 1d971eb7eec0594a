import { describe, it, expect } from 'vitest';
import { renderMarkdown, escapeHtml } from './markdown.js';

describe('markdown notes are safe', () => {
  it.each([
    ['<script>alert(1)</script>', '<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>'],
    ['<img src=x onerror=alert(1)>', '<p>&lt;img src=x onerror=alert(1)&gt;</p>'],
    ['[x](javascript:alert(1))', '<p>[x](javascript:alert(1))</p>'],
    ['[x](data:text/html,hi)', '<p>[x](data:text/html,hi)</p>'],
    // A quote cannot close the attribute: it stays an entity inside it.
    ['[x](https://a.b/?q="><b>)', '<p><a href="https://a.b/?q=&quot;&gt;&lt;b&gt;" rel="noopener noreferrer" target="_blank">x</a></p>'],
    ['`<b>`', '<p><code>&lt;b&gt;</code></p>'],
    ['```\n<b>x</b>\n```', '<pre><code>&lt;b&gt;x&lt;/b&gt;</code></pre>'],
  ])('%s', (text, html) => expect(renderMarkdown(text)).toBe(html));

  it('escapes every HTML-special character', () => {
    expect(escapeHtml(`<a href="x" title='y'>&</a>`)).toBe('&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;');
  });
});

describe('markdown notes render', () => {
  it.each([
    ['# Idea', '<h3>Idea</h3>'],
    ['### Small', '<h5>Small</h5>'],
    ['Try **lower** LR, *maybe* `1e-4`.', '<p>Try <strong>lower</strong> LR, <em>maybe</em> <code>1e-4</code>.</p>'],
    ['- one\n- two', '<ul>\n<li>one</li>\n<li>two</li>\n</ul>'],
    ['1. first\n2. second', '<ol>\n<li>first</li>\n<li>second</li>\n</ol>'],
    ['a\nb\n\nc', '<p>a b</p>\n<p>c</p>'],
    ['[docs](https://pytorch.org)', '<p><a href="https://pytorch.org" rel="noopener noreferrer" target="_blank">docs</a></p>'],
    ['[run](#/runs/abc)', '<p><a href="#/runs/abc" rel="noopener noreferrer" target="_blank">run</a></p>'],
    ['', ''],
  ])('%s', (text, html) => expect(renderMarkdown(text)).toBe(html));
});
