// A small markdown subset for model output, built as DOM nodes from text: nothing the model writes
// is ever parsed as HTML. Blocks: fenced code, bullet and numbered lists, headings, paragraphs.
// Inline: `code`, **bold**, *italics* / _italics_, [links](https://…) (http and https only).
(function (global) {
  "use strict";

  const INLINE = /`([^`\n]+)`|\*\*(?=\S)([\s\S]*?\S)\*\*|\[([^\]\n]+)\]\(([^)\s]+)\)|\*(?=[^\s*])([^*\n]*?[^\s*])\*|(?<![A-Za-z0-9_])_(?=[^\s_])([^_\n]*?[^\s_])_(?![A-Za-z0-9_])/;

  function safeHref(raw) {
    try {
      const url = new URL(raw);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function inline(text, parent) {
    let rest = text;
    while (rest) {
      const m = INLINE.exec(rest);
      if (!m) { parent.appendChild(document.createTextNode(rest)); return; }
      if (m.index) parent.appendChild(document.createTextNode(rest.slice(0, m.index)));
      if (m[1] !== undefined) {
        const code = document.createElement("code");
        code.textContent = m[1];
        parent.appendChild(code);
      } else if (m[2] !== undefined) {
        const strong = document.createElement("strong");
        inline(m[2], strong);
        parent.appendChild(strong);
      } else if (m[3] !== undefined) {
        const href = safeHref(m[4]);
        if (href) {
          const a = document.createElement("a");
          a.href = href;
          a.rel = "noopener noreferrer nofollow";
          a.target = "_blank";
          a.textContent = m[3];
          parent.appendChild(a);
        } else {
          parent.appendChild(document.createTextNode(m[0]));  // not a web link: show it as written
        }
      } else {
        const em = document.createElement("em");
        inline(m[5] !== undefined ? m[5] : m[6], em);
        parent.appendChild(em);
      }
      rest = rest.slice(m.index + m[0].length);
    }
  }

  function paragraph(lines, parent) {
    const p = document.createElement("p");
    lines.forEach((line, i) => {
      if (i) p.appendChild(document.createElement("br"));
      inline(line, p);
    });
    parent.appendChild(p);
  }

  const FENCE = /^\s*(```|~~~)\s*([\w+.#-]*)\s*$/;
  const BULLET = /^\s*[-*+]\s+(.*)$/;
  const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
  const HEADING = /^(#{1,6})\s+(.*)$/;

  // codeBlock(pre, code, language) lets the page add a copy button to each code block.
  function render(source, target, options) {
    const opts = options || {};
    const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
    const out = document.createDocumentFragment();
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const fence = FENCE.exec(line);
      if (fence) {
        const body = [];
        i += 1;
        while (i < lines.length && lines[i].trim() !== fence[1]) {
          body.push(lines[i]);
          i += 1;
        }
        i += 1;  // the closing fence (or the end of a reply still streaming)
        const pre = document.createElement("pre");
        pre.tabIndex = 0;  // a block that scrolls sideways must be reachable by keyboard
        const code = document.createElement("code");
        code.textContent = body.join("\n");
        if (fence[2]) code.dataset.language = fence[2];
        pre.appendChild(code);
        out.appendChild(pre);
        if (opts.codeBlock) opts.codeBlock(pre, code, fence[2]);
        continue;
      }
      if (!line.trim()) { i += 1; continue; }
      const heading = HEADING.exec(line);
      if (heading) {
        const h = document.createElement("h" + Math.min(6, heading[1].length + 2));
        inline(heading[2], h);
        out.appendChild(h);
        i += 1;
        continue;
      }
      if (BULLET.test(line) || NUMBERED.test(line)) {
        const numbered = !BULLET.test(line);
        const pattern = numbered ? NUMBERED : BULLET;
        const list = document.createElement(numbered ? "ol" : "ul");
        if (numbered) {
          const start = parseInt(NUMBERED.exec(line)[1], 10);
          if (start !== 1) list.start = start;
        }
        while (i < lines.length && pattern.test(lines[i])) {
          const li = document.createElement("li");
          const m = pattern.exec(lines[i]);
          inline(numbered ? m[2] : m[1], li);
          list.appendChild(li);
          i += 1;
        }
        out.appendChild(list);
        continue;
      }
      const para = [];
      while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i])
             && !BULLET.test(lines[i]) && !NUMBERED.test(lines[i])) {
        para.push(lines[i]);
        i += 1;
      }
      paragraph(para, out);
    }
    target.replaceChildren(out);
  }

  global.LeveeMarkdown = { render: render, safeHref: safeHref };
})(window);
