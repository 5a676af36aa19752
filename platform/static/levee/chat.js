// The chat page: render the history, send a message, read the reply as it streams (SSE over a
// POST, read with fetch), stop it, regenerate the last reply, edit a question and resend (both
// truncate: what followed goes), copy messages and highlighted code, show a reasoner's thinking apart
// from its answer, rename, delete and search conversations, keyboard shortcuts. Model text and titles
// only ever become DOM text. Words come from Django's JavaScript catalog (gettext, interpolate).
(function () {
  "use strict";
  const root = document.getElementById("chat");
  if (!root) return;
  const transcript = document.getElementById("transcript");
  const form = document.getElementById("composer");
  const input = document.getElementById("message-input");
  const picker = document.getElementById("model-picker");
  const sendButton = document.getElementById("send-button");
  const stopButton = document.getElementById("stop-button");
  const statusLine = document.getElementById("chat-status");
  const errorLine = document.getElementById("chat-error");
  const title = document.getElementById("chat-title");
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;
  const lang = document.documentElement.lang || "en";
  let conversationId = root.dataset.conversationId || null;
  let current = null;  // {replyId, controller, element, stopping}

  const urls = {
    messages: (cid) => root.dataset.messagesUrlTemplate.replace("/0/", "/" + cid + "/"),
    stop: (cid, mid) => root.dataset.stopUrlTemplate.replace("/0/", "/" + cid + "/").replace("/1/stop", "/" + mid + "/stop"),
    page: (cid) => root.dataset.pageUrlTemplate.replace("/0/", "/" + cid + "/"),
    detail: (cid) => root.dataset.detailUrlTemplate.replace(/\/0$/, "/" + cid),
    exported: (cid, fmt) => root.dataset.exportUrlTemplate.replace("/0/", "/" + cid + "/").replace(/md$/, fmt),
  };

  // The API's errors are English (as DeepSeek's); the page says the ones it knows in the reader's words.
  const KNOWN_ERRORS = {
    daily_quota_exceeded: gettext("You have used today's free chat allowance. It renews at 00:00 UTC; the API is not limited by it."),
    reply_in_progress: gettext("A reply is still being written in one of your chats. Wait for it or stop it first."),
    server_overloaded: gettext("The service is busy right now. Please retry shortly."),
    context_length_exceeded: gettext("The message is too long for this model."),
    model_not_found: gettext("Choose one of the models offered."),
    nothing_to_regenerate: gettext("There is no finished reply to regenerate."),
    message_not_found: gettext("That message is no longer in this conversation."),
  };

  function errorText(data, status) {
    const error = data && data.error;
    if (error && lang !== "en" && KNOWN_ERRORS[error.code]) return KNOWN_ERRORS[error.code];
    if (error && error.message) return error.message;
    return interpolate(gettext("Request failed (%s)"), [status]);
  }

  function addCodeTools(pre, code) {
    LeveeHighlight.highlight(code, code.dataset.language);
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const language = document.createElement("span");
    language.textContent = code.dataset.language || gettext("code");
    bar.appendChild(language);
    bar.appendChild(LeveeCopy.copyButton(() => code.textContent, gettext("Copy code")));
    pre.parentNode.insertBefore(bar, pre);
  }

  function toolButton(label, action) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.dataset.action = action;
    button.textContent = label;
    return button;
  }

  function messageElement(role, id) {
    const article = document.createElement("article");
    article.className = "message " + role;
    if (id) setId(article, id);
    const who = document.createElement("h2");
    who.className = "who visually-hidden";
    who.textContent = role === "user" ? gettext("You said") : gettext("Assistant replied");
    const body = document.createElement("div");
    body.className = "message-body";
    if (role === "assistant") {
      // A reasoner's thinking, above the answer; hidden until there is some.
      const reasoning = document.createElement("details");
      reasoning.className = "reasoning";
      reasoning.hidden = true;
      const summary = document.createElement("summary");
      summary.textContent = gettext("Thinking…");
      summary.addEventListener("click", () => { reasoning.dataset.touched = "1"; });
      const thoughts = document.createElement("div");
      thoughts.className = "reasoning-body";
      reasoning.append(summary, thoughts);
      article.appendChild(reasoning);
    }
    const tools = document.createElement("div");
    tools.className = "message-tools";
    const note = document.createElement("span");
    note.className = "message-note";
    tools.appendChild(note);
    article.prepend(who);
    article.append(body, tools);
    article.raw = "";
    if (role === "user") {
      const edit = toolButton(gettext("Edit"), "edit");
      edit.addEventListener("click", () => startEdit(article));
      tools.appendChild(edit);
    } else {
      const again = toolButton(gettext("Regenerate"), "regenerate");
      again.addEventListener("click", () => regenerate());
      again.hidden = true;
      tools.appendChild(again);
    }
    tools.appendChild(LeveeCopy.copyButton(() => article.raw, gettext("Copy")));
    return article;
  }

  function setId(article, id) {
    article.dataset.messageId = id;
    article.id = "message-" + id;
  }

  function setText(article, text) {
    article.raw = text;
    const body = article.querySelector(".message-body");
    if (article.classList.contains("user")) {
      body.textContent = text;  // what people type is shown exactly as typed
    } else {
      LeveeMarkdown.render(text, body, {codeBlock: addCodeTools});
    }
  }

  // state: "thinking" while it streams, "thought" once the answer starts or the reply has ended.
  function setReasoning(article, text, state) {
    const details = article.querySelector(".reasoning");
    if (!details) return;
    details.hidden = !text;
    details.querySelector(".reasoning-body").textContent = text;  // plain text, never markup
    details.querySelector("summary").textContent = state === "thinking" ? gettext("Thinking…") : gettext("Thought");
  }

  function setNote(article, status, error) {
    const note = article.querySelector(".message-note");
    const notes = {
      stopped: gettext("Stopped."),
      error: interpolate(gettext("Error: %s"), [error || gettext("the reply could not be completed.")]),
      streaming: gettext("Still being written…"),
    };
    note.textContent = notes[status] || "";
    article.dataset.status = status;
  }

  function messages() {
    return [...transcript.querySelectorAll("article.message")];
  }

  // Regenerate belongs to the last reply only, once it has ended; nothing is offered mid-reply.
  function refreshActions() {
    const all = messages();
    const last = all[all.length - 1];
    all.forEach((article) => {
      const again = article.querySelector('[data-action="regenerate"]');
      if (again) again.hidden = !(article === last && !current && article.dataset.status !== "streaming");
      const edit = article.querySelector('[data-action="edit"]');
      if (edit) edit.hidden = Boolean(current) || !article.dataset.messageId;
    });
  }

  function append(role, text, id, status, error, reasoning) {
    const hint = transcript.querySelector(".empty-hint");
    if (hint) hint.remove();
    const article = messageElement(role, id);
    setText(article, text);
    if (reasoning) setReasoning(article, reasoning, status === "streaming" && !text ? "thinking" : "thought");
    if (status) setNote(article, status, error);
    transcript.appendChild(article);
    article.scrollIntoView({block: "end"});
    return article;
  }

  const initial = JSON.parse(document.getElementById("initial-messages").textContent);
  initial.forEach((m) => append(m.role, m.content, m.id, m.status, m.error, m.reasoning));
  // A search result links to a message: bring it into view and mark it (on load, or when the link
  // was to this very page and only the fragment changed).
  function showTarget() {
    if (!location.hash.startsWith("#message-")) return;
    const target = document.getElementById(location.hash.slice(1));
    if (!target) return;
    transcript.querySelectorAll(".message.target").forEach((m) => m.classList.remove("target"));
    target.classList.add("target");
    target.scrollIntoView({block: "center"});
  }
  showTarget();
  window.addEventListener("hashchange", showTarget);

  function showError(message) {
    errorLine.textContent = message;
    errorLine.hidden = !message;
  }

  function busy(on) {
    sendButton.disabled = on || !picker.options.length;
    stopButton.hidden = !on;
    picker.disabled = on;
    statusLine.textContent = on ? gettext("Writing a reply…") : "";
  }

  async function requestJson(method, url, body) {
    const response = await fetch(url, {
      method: method, credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrf, "Accept": "application/json"},
      body: method === "DELETE" || method === "GET" ? undefined : JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { /* 204, or an HTML error page */ }
    if (!response.ok) throw new Error(errorText(data, response.status));
    return data;
  }

  const postJson = (url, body) => requestJson("POST", url, body);
  const list = document.getElementById("conversation-list");

  function listButton(action, symbol) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "icon";
    button.dataset.action = action;
    button.title = action === "rename" ? gettext("Rename") : gettext("Delete");
    button.textContent = symbol;
    return button;
  }

  // The same structure as the template's list items.
  function addToList(conversation) {
    const empty = document.getElementById("no-conversations");
    if (empty) empty.remove();
    list.querySelectorAll("[aria-current]").forEach((a) => a.removeAttribute("aria-current"));
    const li = document.createElement("li");
    li.className = "conversation";
    li.dataset.conversationId = conversation.id;
    const a = document.createElement("a");
    a.href = urls.page(conversation.id);
    a.setAttribute("aria-current", "page");
    const tools = document.createElement("span");
    tools.className = "conversation-tools";
    tools.append(listButton("rename", "✎"), listButton("delete", "✕"));
    li.append(a, tools);
    list.prepend(li);
    listTitle(li, conversation.title);
  }

  function listTitle(li, text) {
    li.querySelector("a").textContent = text;
    li.querySelector('[data-action="rename"]').setAttribute("aria-label", interpolate(gettext("Rename “%s”"), [text]));
    li.querySelector('[data-action="delete"]').setAttribute("aria-label", interpolate(gettext("Delete “%s”"), [text]));
  }

  function retitle(conversation) {
    if (String(conversation.id) === String(conversationId)) {
      title.textContent = conversation.title;
      document.title = conversation.title + " · Levee";
    }
    const li = list.querySelector('li[data-conversation-id="' + Number(conversation.id) + '"]');
    if (li) listTitle(li, conversation.title);
  }

  function showExports(cid) {
    document.getElementById("export-md").href = urls.exported(cid, "md");
    document.getElementById("export-json").href = urls.exported(cid, "json");
    document.getElementById("export-links").hidden = false;
  }

  // Rename in place: Enter or leaving the field saves, Escape keeps the old title.
  function startRename(li) {
    if (li.querySelector(".rename-input")) return;
    const link = li.querySelector("a");
    const tools = li.querySelector(".conversation-tools");
    const field = document.createElement("input");
    field.type = "text";
    field.className = "rename-input";
    field.maxLength = 80;
    field.value = link.textContent;
    field.setAttribute("aria-label", gettext("New title"));
    link.hidden = tools.hidden = true;
    li.insertBefore(field, link);
    field.focus();
    field.select();
    let ended = false;
    async function end(save) {
      if (ended) return;
      ended = true;
      const text = field.value.trim();
      if (save && text && text !== link.textContent) {
        field.disabled = true;
        try {
          retitle(await requestJson("PATCH", urls.detail(li.dataset.conversationId), {title: text}));
          showError("");
        } catch (e) {
          showError(interpolate(gettext("Could not rename the chat: %s"), [e.message]));
        }
      }
      field.remove();
      link.hidden = tools.hidden = false;
      li.querySelector('[data-action="rename"]').focus();
    }
    field.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.isComposing) { event.preventDefault(); end(true); }
      else if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); end(false); }
    });
    field.addEventListener("blur", () => end(true));
  }

  async function remove(li) {
    const id = li.dataset.conversationId;
    const name = li.querySelector("a").textContent;
    if (!window.confirm(interpolate(gettext("Delete “%s” and all its messages? This cannot be undone."), [name]))) return;
    try {
      await requestJson("DELETE", urls.detail(id));
    } catch (e) {
      showError(interpolate(gettext("Could not delete the chat: %s"), [e.message]));
      return;
    }
    if (String(id) === String(conversationId)) {  // the open one: back to an empty chat
      if (current) current.controller.abort();
      window.location.assign(root.dataset.chatUrl);
      return;
    }
    li.remove();
    if (!list.querySelector("li")) {
      const empty = document.createElement("li");
      empty.className = "muted";
      empty.id = "no-conversations";
      empty.textContent = gettext("No conversations yet.");
      list.appendChild(empty);
    }
  }

  list.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const li = button.closest("li");
    if (button.dataset.action === "rename") startRename(li);
    else remove(li).catch((e) => showError(e.message));
  });

  // Server-Sent Events from a fetch body: blocks separated by a blank line, "event:" and "data:" lines.
  async function* readEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message", data = "";
        block.split("\n").forEach((line) => {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        });
        if (data) yield {name: name, data: JSON.parse(data)};
      }
    }
  }

  // Send a question and stream its reply. options.regenerate: answer the last question again (its
  // old reply is already off the page); options.edit: the id of the question this text replaces
  // (it and what followed are already off the page). Refused, the page is put back as it was.
  async function send(text, options) {
    const opts = options || {};
    showError("");
    if (!conversationId) {
      const conversation = await postJson(root.dataset.createUrl, {model: picker.value});
      conversationId = String(conversation.id);
      addToList(conversation);
      history.replaceState(null, "", urls.page(conversationId));
      showExports(conversationId);
    }
    const question = opts.regenerate ? messages().filter((m) => m.classList.contains("user")).pop() : append("user", text);
    const reply = append("assistant", "");
    reply.classList.add("streaming");
    reply.setAttribute("aria-busy", "true");
    const controller = new AbortController();
    current = {replyId: null, controller: controller, element: reply, stopping: false};
    busy(true);
    refreshActions();
    // How the reply ended; shown (data-status) only once the page is ready for the next message.
    let text_ = "", reasoning_ = "", outcome = null;
    const body = {model: picker.value};
    if (opts.regenerate) body.regenerate = true;
    else body.content = text;
    if (opts.edit) body.edit = Number(opts.edit);
    try {
      const response = await fetch(urls.messages(conversationId), {
        method: "POST", credentials: "same-origin", signal: controller.signal,
        headers: {"Content-Type": "application/json", "X-CSRFToken": csrf, "Accept": "text/event-stream"},
        body: JSON.stringify(body),
      });
      if (!response.ok) {
        let data = {};
        try { data = await response.json(); } catch (e) { /* keep */ }
        reply.remove();
        if (!opts.regenerate) question.remove();
        if (opts.restore) opts.restore();  // nothing was replaced: the removed messages come back
        else if (!opts.regenerate) input.value = text;  // nothing was sent: give the text back
        throw new Error(errorText(data, response.status));
      }
      for await (const event of readEvents(response)) {
        if (event.name === "start") {
          current.replyId = event.data.reply_id;
          setId(reply, event.data.reply_id);
          setId(question, event.data.question_id);
          retitle(event.data.conversation);
          if (current.stopping) stop();
        } else if (event.name === "reasoning") {
          if (!reasoning_) reply.querySelector(".reasoning").open = true;  // watch it think
          reasoning_ += event.data.text;
          setReasoning(reply, reasoning_, text_ ? "thought" : "thinking");
          reply.scrollIntoView({block: "end"});
        } else if (event.name === "delta") {
          if (reasoning_ && !text_) setReasoning(reply, reasoning_, "thought");
          text_ += event.data.text;
          setText(reply, text_);
          reply.scrollIntoView({block: "end"});
        } else if (event.name === "done") {
          outcome = {status: event.data.status};
          const used = document.getElementById("quota-used");
          const u = event.data.usage || {};
          if (used) {
            used.dataset.used = Number(used.dataset.used) + (u.prompt_tokens || 0) + (u.completion_tokens || 0);
            used.textContent = Number(used.dataset.used).toLocaleString(lang);
          }
        } else if (event.name === "error") {
          outcome = {status: "error", error: event.data.message};
        }
      }
      if (!outcome) outcome = {status: "error", error: gettext("the connection closed before the reply ended.")};
    } catch (e) {
      if (e.name === "AbortError") outcome = {status: "stopped"};
      else if (reply.isConnected) outcome = {status: "error", error: e.message};
      else showError(e.message);  // refused: the page is already as it was
    } finally {
      if (reasoning_) {
        setReasoning(reply, reasoning_, "thought");
        const details = reply.querySelector(".reasoning");
        if (!details.dataset.touched) details.open = false;  // collapsed once done, unless opened by hand
      }
      reply.classList.remove("streaming");
      reply.removeAttribute("aria-busy");
      current = null;
      busy(false);
      if (outcome && reply.isConnected) setNote(reply, outcome.status, outcome.error);
      refreshActions();
      input.focus();
    }
  }

  // Take messages off the page (from `first` to the end); returns a function that puts them back.
  function detachFrom(first) {
    const all = messages();
    const gone = all.slice(all.indexOf(first));
    gone.forEach((m) => m.remove());
    return () => gone.forEach((m) => transcript.appendChild(m));
  }

  function regenerate() {
    if (current) return;
    const all = messages();
    const last = all[all.length - 1];
    if (!last || !last.classList.contains("assistant")) return;
    const restore = detachFrom(last);
    send(null, {regenerate: true, restore: restore}).catch((e) => { restore(); showError(e.message); });
  }

  // Edit a question in place; sending replaces it and everything after it (the page says how many).
  function startEdit(article) {
    if (current || article.classList.contains("editing")) return;
    const all = messages();
    const after = all.length - all.indexOf(article) - 1;
    const body = article.querySelector(".message-body");
    const tools = article.querySelector(".message-tools");
    article.classList.add("editing");
    body.hidden = tools.hidden = true;
    const box = document.createElement("div");
    box.className = "edit-box";
    const field = document.createElement("textarea");
    field.rows = 3;
    field.maxLength = Number(input.maxLength) || 16000;
    field.value = article.raw;
    field.setAttribute("aria-label", gettext("Edit your message"));
    const note = document.createElement("p");
    note.className = "edit-note";
    note.id = "edit-note-" + article.dataset.messageId;
    note.textContent = after
      ? interpolate(ngettext("Sending replaces this message and the %s message after it.",
                             "Sending replaces this message and the %s messages after it.", after), [after])
      : gettext("Sending replaces this message.");
    field.setAttribute("aria-describedby", note.id);
    const actions = document.createElement("div");
    actions.className = "edit-actions";
    const cancel = toolButton(gettext("Cancel"), "cancel-edit");
    const save = document.createElement("button");
    save.type = "button";
    save.textContent = gettext("Send");
    save.dataset.action = "send-edit";
    actions.append(cancel, save);
    box.append(field, note, actions);
    article.insertBefore(box, tools);
    field.focus();

    function close() {
      box.remove();
      article.classList.remove("editing");
      body.hidden = tools.hidden = false;
    }
    function submit() {
      const text = field.value.trim();
      if (!text || current) return;
      close();
      const restore = detachFrom(article);
      send(text, {edit: article.dataset.messageId, restore: restore}).catch((e) => { restore(); showError(e.message); });
    }
    cancel.addEventListener("click", () => { close(); article.querySelector('[data-action="edit"]').focus(); });
    save.addEventListener("click", submit);
    field.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); submit(); }
      else if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); cancel.click(); }
    });
  }

  async function stop() {
    if (!current) return;
    current.stopping = true;
    stopButton.disabled = true;
    statusLine.textContent = gettext("Stopping…");
    if (!current.replyId) return;  // the start event will call stop() again
    try {
      await postJson(urls.stop(conversationId, current.replyId));
    } catch (e) {
      current && current.controller.abort();  // at least stop reading; the server cancels the job
    } finally {
      stopButton.disabled = false;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || current) return;
    input.value = "";
    send(text).catch((e) => showError(e.message));
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    } else if (event.key === "ArrowUp" && !input.value && !current) {
      const mine = messages().filter((m) => m.classList.contains("user") && m.dataset.messageId).pop();
      if (mine) { event.preventDefault(); startEdit(mine); }
    }
  });
  stopButton.addEventListener("click", stop);
  busy(false);  // ready: Send is enabled (when a model is offered); the template renders it disabled
  refreshActions();

  // Search across conversations: as you type (a quarter second after the last key), the matches
  // replace the list; an empty box brings the list back.
  const searchBox = document.getElementById("search-input");
  const searchResults = document.getElementById("search-results");
  const searchStatus = document.getElementById("search-status");
  let searchTimer = null, searchSeq = 0;

  function marked(text, terms, parent) {
    const lowered = text.toLowerCase();
    let at = 0;
    while (at < text.length) {
      let next = -1, size = 0;
      terms.forEach((t) => {
        const i = lowered.indexOf(t, at);
        if (i >= 0 && (next < 0 || i < next)) { next = i; size = t.length; }
      });
      if (next < 0) { parent.appendChild(document.createTextNode(text.slice(at))); return; }
      if (next > at) parent.appendChild(document.createTextNode(text.slice(at, next)));
      const mark = document.createElement("mark");
      mark.textContent = text.slice(next, next + size);
      parent.appendChild(mark);
      at = next + size;
    }
  }

  async function runSearch() {
    const query = searchBox.value.trim();
    const seq = ++searchSeq;
    if (!query) {
      searchResults.hidden = true;
      searchResults.replaceChildren();
      list.hidden = false;
      searchStatus.textContent = "";
      return;
    }
    let data;
    try {
      data = await requestJson("GET", root.dataset.searchUrl + "?q=" + encodeURIComponent(query));
    } catch (e) {
      if (seq === searchSeq) searchStatus.textContent = e.message;
      return;
    }
    if (seq !== searchSeq) return;  // a newer search is on its way
    const terms = query.toLowerCase().split(/\s+/).map((t) => t.replace(/^["'-]+|["']+$/g, "")).filter(Boolean);
    const items = data.results.map((hit) => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = urls.page(hit.conversation) + (hit.message ? "#message-" + Number(hit.message) : "");
      const name = document.createElement("span");
      name.className = "hit-title";
      marked(hit.title, terms, name);
      a.appendChild(name);
      if (hit.snippet) {
        const text = document.createElement("span");
        text.className = "hit-snippet";
        marked(hit.snippet, terms, text);
        a.appendChild(text);
      }
      li.appendChild(a);
      return li;
    });
    searchResults.replaceChildren(...items);
    searchResults.hidden = false;
    list.hidden = true;
    searchStatus.textContent = items.length
      ? interpolate(ngettext("%s conversation found.", "%s conversations found.", items.length), [items.length])
      : gettext("No conversation matches.");
  }

  document.getElementById("chat-search").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(searchTimer);
    runSearch().then(() => { const first = searchResults.querySelector("a"); if (first) first.focus(); });
  });
  searchBox.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(runSearch, 250);
  });
  searchBox.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      searchBox.value = "";
      runSearch();
      input.focus();
    }
  });

  // Keyboard shortcuts (the list is in the page's dialog, opened with "?").
  const dialog = document.getElementById("shortcuts");
  document.getElementById("shortcuts-button").addEventListener("click", () => dialog.showModal());

  function typing(target) {
    return target.closest("input, textarea, select, [contenteditable]") !== null;
  }

  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.isComposing || dialog.open) return;
    const mod = event.ctrlKey || event.metaKey;
    const key = event.key.toLowerCase();
    if ((mod && !event.shiftKey && key === "k") || (event.key === "/" && !mod && !typing(event.target))) {
      event.preventDefault();
      searchBox.focus();
      searchBox.select();
    } else if (mod && event.shiftKey && key === "o") {
      event.preventDefault();
      window.location.assign(root.dataset.chatUrl);
    } else if (mod && event.shiftKey && key === "l") {
      event.preventDefault();
      regenerate();
    } else if (event.key === "Escape" && current) {
      event.preventDefault();
      stop();
    } else if (event.key === "?" && !mod && !typing(event.target)) {
      event.preventDefault();
      dialog.showModal();
    }
  });
})();
