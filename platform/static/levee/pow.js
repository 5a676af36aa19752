// Proof of work (the sign-up form, and the admission layer's "checking your browser" page): find a
// nonce so SHA-256("<challenge>:<nonce>") starts with N zero bits. The server sets data-pow-bits and
// the challenge; 0 bits means no work is asked. A form marked data-pow-auto is sent once solved.
(function () {
  "use strict";
  const form = document.querySelector("form[data-pow-bits]");
  // A button marked data-pow-wait stays disabled until the submit handler below is in place.
  const ready = () => form && form.querySelectorAll("[data-pow-wait]").forEach((b) => { b.disabled = false; });
  if (!form || !window.crypto || !crypto.subtle) { ready(); return; }
  const bits = parseInt(form.dataset.powBits, 10) || 0;
  if (bits <= 0) { ready(); return; }
  const challenge = form.querySelector("input[name=pow_challenge]").value;
  const nonceField = form.querySelector("input[name=pow_nonce]");
  const status = form.querySelector(".pow-status");
  const encoder = new TextEncoder();
  // The admission layer's interstitial is a pre-built page without Django's JavaScript catalog: there
  // gettext does not exist, and the form carries the words, in the page's language (data-pow-working,
  // data-pow-ready).
  const t = (text, key) => form.dataset[key] || (typeof window.gettext === "function" ? window.gettext(text) : text);

  function zeroBits(bytes) {
    let n = 0;
    for (const b of bytes) {
      if (b === 0) { n += 8; continue; }
      return n + Math.clz32(b) - 24;
    }
    return n;
  }

  async function solve() {
    for (let nonce = 0; ; nonce++) {
      const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(challenge + ":" + nonce)));
      if (zeroBits(digest) >= bits) return String(nonce);
    }
  }

  let solving = null;
  function start() {
    if (!solving) {
      if (status) status.textContent = t("Checking your browser…", "powWorking");
      solving = solve().then((nonce) => {
        nonceField.value = nonce;
        if (status) status.textContent = t("Ready.", "powReady");
        return nonce;
      });
    }
    return solving;
  }
  if (form.hasAttribute("data-pow-auto")) {
    start().then(() => form.submit());
    return;
  }
  start();  // begin while the person types
  form.addEventListener("submit", (event) => {
    if (nonceField.value) return;
    event.preventDefault();
    start().then(() => form.submit());
  });
  ready();
})();
