// Create and revoke API keys through the owner's JSON API; the new key is shown once.
(function () {
  "use strict";
  const form = document.getElementById("new-key");
  if (!form) return;
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;
  const error = document.getElementById("key-error");

  async function call(url, body) {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrf},
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) throw new Error(data.error ? data.error.message : interpolate(gettext("Request failed (%s)"), [response.status]));
    return data;
  }

  function cell(row, text, code) {
    const td = document.createElement("td");
    if (code) {
      const c = document.createElement("code");
      c.textContent = text;
      td.appendChild(c);
    } else {
      td.textContent = text;
    }
    row.appendChild(td);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    try {
      const data = await call(form.dataset.endpoint, {name: form.elements.name.value});
      document.getElementById("new-key-value").textContent = data.key;
      const box = document.getElementById("new-key-result");
      box.hidden = false;
      box.focus();
      const empty = document.getElementById("no-keys");
      if (empty) empty.remove();
      const row = document.createElement("tr");
      cell(row, data.name || "—");
      cell(row, data.prefix + "…", true);
      cell(row, gettext("just now"));
      cell(row, gettext("never"));
      cell(row, gettext("active"));
      cell(row, gettext("none"));
      cell(row, "");
      document.querySelector("#keys tbody").prepend(row);
      form.reset();
    } catch (e) { error.textContent = e.message; error.hidden = false; }
  });
  form.querySelector("button[type=submit]").disabled = false;  // ready: the template renders it disabled
  document.getElementById("copy-key").addEventListener("click", (event) => {
    LeveeCopy.copyText(event.currentTarget, document.getElementById("new-key-value").textContent);
  });
  document.querySelectorAll("button.revoke").forEach((button) => {
    button.addEventListener("click", async () => {
      if (!window.confirm(interpolate(gettext("Revoke the key %s? Programs using it stop working at once."),
                                      [button.dataset.name]))) return;
      try { await call(button.dataset.endpoint); window.location.reload(); }
      catch (e) { error.textContent = e.message; error.hidden = false; }
    });
  });
})();
