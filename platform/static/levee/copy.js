// Copy buttons: copyText(button, text) puts text on the clipboard and says so on the button.
(function (global) {
  "use strict";

  async function copyText(button, text) {
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = gettext("Copied");
    } catch (e) {
      button.textContent = gettext("Copy failed");
    }
    setTimeout(() => { button.textContent = label; }, 2000);
  }

  function copyButton(getText, label) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = label || gettext("Copy");
    button.addEventListener("click", () => copyText(button, getText()));
    return button;
  }

  global.LeveeCopy = { copyText: copyText, copyButton: copyButton };
})(window);
