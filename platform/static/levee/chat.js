// The chat page: render the history, send a message, read the reply as it streams (SSE over a
// POST, read with fetch), stop it, copy messages and code. Model text only ever becomes DOM text.
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
    const tools = document.createElement("div");
    tools.className = "message-tools";
    const note = document.createElement("span");
    note.className = "message-note";
    tools.appendChild(note);
    article.append(who, body, tools);
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

  function setNote(article, status, error) {
    const note = article.querySelector(".message-note");
    note.textContent = {stopped: "Stopped.", error: "Error: " + (error || "the reply could not be completed."),
                        streaming: "Still being written…"}[status] || "";
    article.dataset.status = status;
  }

  function append(role, text, id, status, error) {
    const hint = transcript.querySelector(".empty-hint");
    if (hint) hint.remove();
    const article = messageElement(role, id);
    setText(article, text);
    if (status) setNote(article, status, error);
    transcript.appendChild(article);
    article.scrollIntoView({block: "end"});
    return article;
  }

  const initial = JSON.parse(document.getElementById("initial-messages").textContent);
  initial.forEach((m) => append(m.role, m.content, m.id, m.status, m.error));

  function showError(message) {
    errorLine.textContent = message;
    errorLine.hidden = !message;
  }

  function busy(on) {
    sendButton.disabled = on;
    stopButton.hidden = !on;
    picker.disabled = on;
    statusLine.textContent = on ? "Writing a reply…" : "";
  }

  async function postJson(url, body) {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrf, "Accept": "application/json"},
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { /* an HTML error page */ }
    if (!response.ok) throw new Error(data.error ? data.error.message : "Request failed (" + response.status + ")");
    return data;
  }

  function addToList(conversation) {
    const list = document.getElementById("conversation-list");
    const empty = document.getElementById("no-conversations");
    if (empty) empty.remove();
    list.querySelectorAll("[aria-current]").forEach((a) => a.removeAttribute("aria-current"));
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = urls.page(conversation.id);
    a.dataset.conversationId = conversation.id;
    a.textContent = conversation.title;
    a.setAttribute("aria-current", "page");
    li.appendChild(a);
    list.prepend(li);
  }

  function retitle(conversation) {
    title.textContent = conversation.title;
    document.title = conversation.title + " · Levee";
    const link = document.querySelector('#conversation-list a[aria-current="page"]');
    if (link) link.textContent = conversation.title;
  }

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
    let text_ = "", ended = false;
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
        } else if (event.name === "delta") {
          text_ += event.data.text;
          setText(reply, text_);
          reply.scrollIntoView({block: "end"});
        } else if (event.name === "done") {
          ended = true;
          setNote(reply, event.data.status);
          const used = document.getElementById("quota-used");
          const u = event.data.usage || {};
          if (used) used.textContent = String(Number(used.textContent) + (u.prompt_tokens || 0) + (u.completion_tokens || 0));
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
