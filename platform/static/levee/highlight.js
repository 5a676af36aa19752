// Syntax highlighting of code blocks with the vendored highlight.js (static/vendor/highlight/), kept
// to DOM text: highlight.js's token tree is walked into <span class="hljs-…"> elements whose text is
// set with createTextNode, so model output is never parsed as HTML (its toHTML() is not used).
(function (global) {
  "use strict";

  // Only a language the block names (```python) and highlight.js knows; no guessing: auto-detection
  // costs a pass per language on every streamed delta, and a wrong guess is worse than none.
  function highlight(code, language) {
    const hljs = global.hljs;
    if (!hljs || !language || !hljs.getLanguage(language)) return false;
    let result;
    try {
      result = hljs.highlight(code.textContent, {language: language, ignoreIllegals: true});
    } catch (e) {
      return false;
    }
    const tree = result._emitter && result._emitter.rootNode;
    if (!tree) return false;
    const out = document.createDocumentFragment();
    build(tree, out);
    code.replaceChildren(out);
    code.classList.add("hljs");
    return true;
  }

  function build(node, parent) {
    (node.children || []).forEach((child) => {
      if (typeof child === "string") {
        parent.appendChild(document.createTextNode(child));
        return;
      }
      const span = document.createElement("span");
      if (child.scope) {
        // "title.function" → hljs-title function_ (highlight.js's own class naming)
        const parts = String(child.scope).split(".");
        span.className = ["hljs-" + parts[0]].concat(parts.slice(1).map((p, i) => p + "_".repeat(i + 1))).join(" ");
      }
      build(child, span);
      parent.appendChild(span);
    });
  }

  global.LeveeHighlight = {highlight: highlight};
})(window);
