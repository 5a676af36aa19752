// The header's display preferences.
// Colour scheme: automatic (the system's prefers-color-scheme), light or dark. The choice goes in
// <html data-theme> now and in the levee_theme cookie for the next page (the server renders it, so
// nothing flashes); automatic clears both. The switch is hidden without script (it could do nothing).
// Language: the form posts to the server (cookie + the account's preference); with script it sends
// itself when the choice changes, and its button goes.
(function () {
  "use strict";
  const root = document.documentElement;
  const picker = document.getElementById("theme-picker");
  if (picker) {
    picker.value = root.dataset.theme || "auto";
    picker.closest(".pref").hidden = false;
    picker.addEventListener("change", () => {
      const theme = picker.value === "light" || picker.value === "dark" ? picker.value : "";
      if (theme) root.dataset.theme = theme; else delete root.dataset.theme;
      const age = theme ? 365 * 24 * 3600 : 0;
      document.cookie = "levee_theme=" + theme + "; path=/; max-age=" + age + "; samesite=lax";
    });
  }
  const language = document.getElementById("language-picker");
  if (language) {
    const button = language.form.querySelector("button");
    if (button) button.hidden = true;
    language.addEventListener("change", () => language.form.requestSubmit());
  }
})();
