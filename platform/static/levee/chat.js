// The chat page: render the history, send a message, read the reply as it streams (SSE over a
// POST, read with fetch), stop it, copy messages and code, show a reasoner's thinking apart from its
// answer, rename and delete conversations. Model text and titles only ever become DOM text.
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
  let conversationId = root.dataset.conversationId || null;
  let current = null;  // {replyId, controller, element, stopping}

  const urls = {
    messages: (cid) => root.dataset.messagesUrlTemplate.replace("/0/", "/" + cid + "/"),
    stop: (cid, mid) => root.dataset.stopUrlTemplate.replace("/0/", "/" + cid + "/").replace("/1/stop", "/" + mid + "/stop"),
    page: (cid) => root.dataset.pageUrlTemplate.replace("/0/", "/" + cid + "/"),
    detail: (cid) => root.dataset.detailUrlTemplate.replace(/\/0$/, "/" + cid),
  };

  function addCodeCopy(pre, code) {
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const lang = document.createElement("span");
    lang.textContent = code.dataset.language || "code";
    bar.appendChild(lang);
    bar.appendChild(LeveeCopy.copyButton(() => code.textContent, "Copy code"));
    pre.parentNode.insertBefore(bar, pre);
  }

  function messageElement(role, id) {
    const article = document.createElement("article");
    article.className = "message " + role;
    if (id) article.dataset.messageId = id;
    const who = document.createElement("h2");
    who.className = "who visually-hidden";
    who.textContent = role === "user" ? "You said" : "Assistant replied";
    const body = document.createElement("div");
    body.className = "message-body";
    if (role === "assistant") {
      // A reasoner's thinking, above the answer; hidden until there is some.
      const reasoning = document.createElement("details");
      reasoning.className = "reasoning";
      reasoning.hidden = true;
      const summary = document.createElement("summary");
      summary.textContent = "Thinking…";
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
    tools.appendChild(LeveeCopy.copyButton(() => article.raw, "Copy"));
    return article;
  }

  function setText(article, text) {
    article.raw = text;
    const body = article.querySelector(".message-body");
    if (article.classList.contains("user")) {
      body.textContent = text;  // what people type is shown exactly as typed
    } else {
      LeveeMarkdown.render(text, body, {codeBlock: addCodeCopy});
    }
  }

  // state: "thinking" while it streams, "thought" once the answer starts or the reply has ended.
  function setReasoning(article, text, state) {
    const details = article.querySelector(".reasoning");
    if (!details) return;
    details.hidden = !text;
    details.querySelector(".reasoning-body").textContent = text;  // plain text, never markup
    details.querySelector("summary").textContent = state === "thinking" ? "Thinking…" : "Thought";
  }

  function setNote(article, status, error) {
    const note = article.querySelector(".message-note");
    note.textContent = {stopped: "Stopped.", error: "Error: " + (error || "the reply could not be completed."),
                        streaming: "Still being written…"}[status] || "";
    article.dataset.status = status;
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

  function showError(message) {
    errorLine.textContent = message;
    errorLine.hidden = !message;
  }

  function busy(on) {
    sendButton.disabled = on || !picker.options.length;
    stopButton.hidden = !on;
    picker.disabled = on;
    statusLine.textContent = on ? "Writing a reply…" : "";
  }

  async function requestJson(method, url, body) {
    const response = await fetch(url, {
      method: method, credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrf, "Accept": "application/json"},
      body: method === "DELETE" ? undefined : JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { /* 204, or an HTML error page */ }
    if (!response.ok) throw new Error(data.error ? data.error.message : "Request failed (" + response.status + ")");
    return data;
  }

  const postJson = (url, body) => requestJson("POST", url, body);
  const list = document.getElementById("conversation-list");

  function toolButton(action, symbol) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "icon";
    button.dataset.action = action;
    button.title = action === "rename" ? "Rename" : "Delete";
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
    tools.append(toolButton("rename", "✎"), toolButton("delete", "✕"));
    li.append(a, tools);
    list.prepend(li);
    listTitle(li, conversation.title);
  }

  function listTitle(li, text) {
    li.querySelector("a").textContent = text;
    li.querySelector('[data-action="rename"]').setAttribute("aria-label", "Rename “" + text + "”");
    li.querySelector('[data-action="delete"]').setAttribute("aria-label", "Delete “" + text + "”");
  }

  function retitle(conversation) {
    if (String(conversation.id) === String(conversationId)) {
      title.textContent = conversation.title;
      document.title = conversation.title + " · Levee";
    }
    const li = list.querySelector('li[data-conversation-id="' + Number(conversation.id) + '"]');
    if (li) listTitle(li, conversation.title);
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
    field.setAttribute("aria-label", "New title");
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
          showError("Could not rename the chat: " + e.message);
        }
      }
      field.remove();
      link.hidden = tools.hidden = false;
      li.querySelector('[data-action="rename"]').focus();
    }
    field.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.isComposing) { event.preventDefault(); end(true); }
      else if (event.key === "Escape") { event.preventDefault(); end(false); }
    });
    field.addEventListener("blur", () => end(true));
  }

  async function remove(li) {
    const id = li.dataset.conversationId;
    const name = li.querySelector("a").textContent;
    if (!window.confirm("Delete “" + name + "” and all its messages? This cannot be undone.")) return;
    try {
      await requestJson("DELETE", urls.detail(id));
    } catch (e) {
      showError("Could not delete the chat: " + e.message);
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
      empty.textContent = "No conversations yet.";
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

  async function send(text) {
    showError("");
    if (!conversationId) {
      const conversation = await postJson(root.dataset.createUrl, {model: picker.value});
      conversationId = String(conversation.id);
      addToList(conversation);
      history.replaceState(null, "", urls.page(conversationId));
    }
    const question = append("user", text);
    const reply = append("assistant", "");
    reply.classList.add("streaming");
    reply.setAttribute("aria-busy", "true");
    const controller = new AbortController();
    current = {replyId: null, controller: controller, element: reply, stopping: false};
    busy(true);
    let text_ = "", reasoning_ = "", ended = false;
    try {
      const response = await fetch(urls.messages(conversationId), {
        method: "POST", credentials: "same-origin", signal: controller.signal,
        headers: {"Content-Type": "application/json", "X-CSRFToken": csrf, "Accept": "text/event-stream"},
        body: JSON.stringify({content: text, model: picker.value}),
      });
      if (!response.ok) {
        let message = "Request failed (" + response.status + ")";
        try { const data = await response.json(); message = data.error.message; } catch (e) { /* keep */ }
        question.remove();
        reply.remove();
        input.value = text;  // nothing was sent: give the text back
        throw new Error(message);
      }
      for await (const event of readEvents(response)) {
        if (event.name === "start") {
          current.replyId = event.data.reply_id;
          reply.dataset.messageId = event.data.reply_id;
          question.dataset.messageId = event.data.question_id;
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
          ended = true;
          setNote(reply, event.data.status);
          const used = document.getElementById("quota-used");
          const u = event.data.usage || {};
          if (used) {
            used.dataset.used = Number(used.dataset.used) + (u.prompt_tokens || 0) + (u.completion_tokens || 0);
            used.textContent = Number(used.dataset.used).toLocaleString(document.documentElement.lang);
          }
        } else if (event.name === "error") {
          ended = true;
          setNote(reply, "error", event.data.message);
        }
      }
      if (!ended) setNote(reply, "error", "the connection closed before the reply ended.");
    } catch (e) {
      if (e.name === "AbortError") setNote(reply, "stopped");
      else showError(e.message);
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
      input.focus();
    }
  }

  async function stop() {
    if (!current) return;
    current.stopping = true;
    stopButton.disabled = true;
    statusLine.textContent = "Stopping…";
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
    }
  });
  stopButton.addEventListener("click", stop);
})();
