// The admin live dashboard: polls the JSON snapshot every 2 s and fills the page. No dependencies.
(function () {
  "use strict";
  var root = document.getElementById("levee-dash");
  if (!root) return;
  var source = root.getAttribute("data-source");
  var BARS = "▁▂▃▄▅▆▇█";

  function $(id) { return document.getElementById(id); }
  function text(id, value) { var el = $(id); if (el) el.textContent = value; }
  function last(list) { return list && list.length ? list[list.length - 1] : 0; }
  function spark(list) {
    if (!list || !list.length) return "";
    var max = Math.max.apply(null, list.concat([1]));
    return list.map(function (v) { return BARS[Math.min(BARS.length - 1, Math.floor(v / max * (BARS.length - 1)))]; }).join("");
  }
  function series(id, list) { text(id, String(last(list))); text(id + "-spark", spark(list)); }
  function failed(section) { return section && section.error; }

  function render(data) {
    var mode = data.mode;
    if (failed(mode)) { text("levee-mode", "?"); text("levee-mode-detail", mode.error); }
    else if (!mode.mode) { text("levee-mode", gettext("normal")); text("levee-mode-detail", mode.note || ""); }
    else {
      text("levee-mode", mode.mode.replace("_", " "));
      $("levee-mode").className = "big " + (mode.mode === "normal" ? "good" : "bad");
      text("levee-mode-detail", interpolate(gettext("set by %s"), [mode.set_by || gettext("automatic escalation")]) +
        (mode.set_at ? interpolate(gettext(" at %s"), [mode.set_at]) : "") + (mode.reason ? " — " + mode.reason : "") +
        (mode.pinned ? gettext(" (pinned)") : ""));
    }
    var r = data.rates;
    if (failed(r)) {
      ["levee-signups", "levee-logins", "levee-blocked", "levee-shed"].forEach(function (id) { text(id, "?"); });
      text("levee-signups-detail", r.error);
    } else {
      series("levee-signups", r.signups_total);
      text("levee-signups-detail", Object.keys(r.signups).map(function (k) { return k + " " + last(r.signups[k]); }).join(" · "));
      series("levee-logins", r.login_failed);
      series("levee-blocked", r.blocked);
      series("levee-shed", r.shed);
      text("levee-limiter-detail", Object.keys(r.limiter).map(function (k) { return k + " " + last(r.limiter[k]); }).join(" · "));
    }
    var holds = data.billing;
    text("levee-holds", failed(holds) ? "?" : (holds.open_holds === null ? "—" : String(holds.open_holds)));
    var body = document.querySelector("#levee-models tbody");
    body.textContent = "";
    if (failed(data.models)) {
      var row = body.insertRow(); var cell = row.insertCell(); cell.colSpan = 5; cell.textContent = data.models.error;
      return;
    }
    Object.keys(data.models).forEach(function (name) {
      var m = data.models[name], row = body.insertRow();
      var workers = Object.keys(m.workers).map(function (w) {
        var e = (m.engines || {})[w], busy = "";
        if (e) {  // the engine's numbers from that heartbeat
          busy = "; " + e.running + "/" + e.max_batch + " running, " + e.waiting + " waiting" +
            (e.kv_free === null ? "" : ", KV " + Math.round(e.kv_free * 100) + "% free");
        }
        return w + " (" + m.workers[w] + " s" + busy + ")";
      }).join(", ");
      [name, String(m.depth), m.wait_s === null ? "—" : m.wait_s.toFixed(2) + " s", String(m.live_workers), workers || gettext("none")]
        .forEach(function (v, i) {
          var cell = row.insertCell(); cell.textContent = v;
          if (i === 3) cell.className = m.live_workers ? "good" : "bad";
        });
    });
  }

  function poll() {
    fetch(source, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (res) { if (!res.ok) throw new Error("HTTP " + res.status); return res.json(); })
      .then(function (data) { render(data); text("levee-updated", interpolate(gettext("Updated %s."), [new Date().toLocaleTimeString()])); })
      .catch(function (err) { text("levee-updated", interpolate(gettext("Update failed: %s; retrying."), [err.message])); })
      .then(function () { setTimeout(poll, 2000); });
  }
  poll();
})();
