// The colour scheme switch in the header: automatic (the system's prefers-color-scheme), light or
// dark. The choice goes in <html data-theme> now and in the levee_theme cookie for the next page
// (the server renders it, so nothing flashes); automatic clears both.
(function () {
  "use strict";
  const picker = document.getElementById("theme-picker");
  if (!picker) return;
  const root = document.documentElement;
  picker.value = root.dataset.theme || "auto";
  picker.closest("[hidden]") && (picker.closest("[hidden]").hidden = false);  // useless without script
  picker.addEventListener("change", () => {
    const theme = picker.value === "light" || picker.value === "dark" ? picker.value : "";
    if (theme) root.dataset.theme = theme; else delete root.dataset.theme;
    const age = theme ? 365 * 24 * 3600 : 0;
    document.cookie = "levee_theme=" + theme + "; path=/; max-age=" + age + "; samesite=lax";
  });
})();
