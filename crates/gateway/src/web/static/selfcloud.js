// The Super-App's only script. Every page works without it except an import; with it, the
// assistant's answer streams in as it is written. Text is only ever set as text (never as
// markup), so nothing an answer or a record holds can run here.
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

function appendTurn(parent, kind, text) {
  const div = document.createElement("div");
  div.className = "turn " + kind;
  div.textContent = text;
  parent.appendChild(div);
  return div;
}

// Reads server-sent events from a fetch body, calling onEvent with each parsed `data` object
// (lines end in CRLF, LF or CR; a CR last in the buffer may be half of a CRLF, so it waits).
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const lineEnd = /\r\n|\n|\r(?!$)/;
  let buffered = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    buffered += done ? decoder.decode() : decoder.decode(value, { stream: true });
    if (done && buffered.endsWith("\r")) buffered += "\n"; // a last CR can no longer be half a CRLF
    let end;
    while ((end = lineEnd.exec(buffered))) {
      const line = buffered.slice(0, end.index);
      buffered = buffered.slice(end.index + end[0].length);
      if (line.startsWith("data:")) {
        data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      } else if (line === "") {
        const event = data.join("\n");
        data = [];
        if (event === "") continue;
        if (event === "[DONE]") return;
        onEvent(JSON.parse(event));
      }
    }
    if (done) return;
  }
}

function enhanceAsk(form) {
  const log = document.getElementById("conversation");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = form.elements.message.value.trim();
    if (!message) return;
    const button = form.querySelector("button");
    button.disabled = true;
    appendTurn(log, "user", message);
    const answer = appendTurn(log, "assistant", "");
    answer.setAttribute("aria-busy", "true");
    const body = { message };
    if (form.elements.conversation && form.elements.conversation.value) body.conversation = form.elements.conversation.value;
    try {
      const response = await fetch(form.dataset.stream, {
        method: "POST",
        headers: { "content-type": "application/json", "x-csrf-token": csrfToken() },
        body: JSON.stringify(body),
        credentials: "same-origin",
      });
      if (!response.ok) {
        const problem = await response.json().catch(() => ({}));
        answer.textContent = (problem.error && problem.error.message) || "The assistant did not answer (" + response.status + ").";
        answer.classList.add("error");
        return;
      }
      await readEvents(response, (e) => {
        if (e.type === "sources") {
          let field = form.elements.conversation;
          if (!field) {
            field = document.createElement("input");
            field.type = "hidden";
            field.name = "conversation";
            form.appendChild(field);
          }
          field.value = e.conversation;
          if (e.citations && e.citations.length) {
            const p = document.createElement("p");
            p.className = "sources";
            p.textContent = "From: " + e.citations.map((c) => c.collection + "/" + c.key).join(", ");
            log.appendChild(p);
          }
        } else if (e.type === "delta") {
          answer.textContent += e.text;
        } else if (e.type === "error") {
          answer.textContent += " [" + e.error.message + "]";
          answer.classList.add("error");
        } else if (e.type === "done") {
          answer.dataset.finish = e.finish_reason;
        }
      });
      form.elements.message.value = "";
    } catch (err) {
      answer.textContent = "The connection broke: " + err;
      answer.classList.add("error");
    } finally {
      answer.removeAttribute("aria-busy");
      button.disabled = false;
    }
  });
}

function enhanceImport(form) {
  const result = document.getElementById("import-result");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = form.elements.archive.files[0];
    if (!file) return;
    result.textContent = "Importing\u2026";
    const response = await fetch(form.action, {
      method: "POST",
      headers: { "content-type": "application/x-tar", "x-csrf-token": csrfToken() },
      body: file,
      credentials: "same-origin",
    });
    const answer = await response.json().catch(() => ({}));
    result.textContent = response.ok
      ? "Imported " + (answer.records ?? 0) + " records."
      : (answer.error && answer.error.message) || "The import failed (" + response.status + ").";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const ask = document.getElementById("ask");
  if (ask) enhanceAsk(ask);
  const importForm = document.getElementById("import-form");
  if (importForm) enhanceImport(importForm);
});
