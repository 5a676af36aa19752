// Create and revoke API keys through the owner's JSON API; the new key is shown once.
(function () {
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
    const data = await response.json();
    if (!response.ok) throw new Error(data.error ? data.error.message : "Request failed");
    return data;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    try {
      const data = await call(form.dataset.endpoint, {name: form.elements.name.value});
      document.getElementById("new-key-value").textContent = data.key;
      document.getElementById("new-key-result").hidden = false;
    } catch (e) { error.textContent = e.message; error.hidden = false; }
  });
  document.getElementById("copy-key").addEventListener("click", () => {
    navigator.clipboard.writeText(document.getElementById("new-key-value").textContent);
  });
  document.querySelectorAll("button.revoke").forEach((button) => {
    button.addEventListener("click", async () => {
      try { await call(button.dataset.endpoint); window.location.reload(); }
      catch (e) { error.textContent = e.message; error.hidden = false; }
    });
  });
})();
