// knowlm-local web page: chat (streamed from /v1/chat/completions) and extraction (/extract), no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { history: [], controller: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function loadInfo() {
  try {
    const r = await fetch("/health");
    const info = await r.json();
    if (r.ok) {
      $("model-info").textContent = `${info.model} · ${info.backend} on ${info.device} · context ${info.n_ctx}`;
      $("key-box").hidden = !info.auth;
    } else {
      $("model-info").textContent = info.status === "loading" ? "loading the model…" : "error: " + (info.error || info.status);
      setTimeout(loadInfo, 2000);
    }
  } catch (e) {
    $("model-info").textContent = "server not reachable";
    setTimeout(loadInfo, 2000);
  }
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "message " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function number(id) { return Number($(id).value); }

async function send() {
  const instruction = $("instruction").value.trim();
  if (!instruction) return;
  const input = $("input").value.trim();
  const user = input ? instruction + "\n\n" + input : instruction;
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history, { role: "user", content: user });
  addMessage("user", user);
  const out = addMessage("assistant", "");
  out.classList.add("streaming");
  $("instruction").value = "";
  $("send").disabled = true;
  $("stop").disabled = false;
  state.controller = new AbortController();
  let answer = "";
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: state.controller.signal,
      body: JSON.stringify({
        messages, stream: true, temperature: number("temperature"), top_p: number("top_p"),
        top_k: number("top_k"), max_tokens: number("max_tokens"), repeat_penalty: number("repeat_penalty"),
      }),
    });
    if (!r.ok) {
      const err = await r.json();
      throw new Error(err.error ? err.error.message : r.statusText);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split(/\r?\n\r?\n/);
      buffer = events.pop();
      for (const event of events) {
        for (const line of event.split(/\r?\n/)) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            answer += delta.content;
            out.textContent = answer;
          }
        }
      }
    }
    state.history.push({ role: "user", content: user }, { role: "assistant", content: answer });
  } catch (e) {
    if (e.name !== "AbortError") out.textContent = answer + "\n[error: " + e.message + "]";
  } finally {
    out.classList.remove("streaming");
    out.classList.add("done");
    $("send").disabled = false;
    $("stop").disabled = true;
    state.controller = null;
  }
}

function escapeHtml(s) {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function highlight(text, spans) {
  // each character takes the label of the first span covering it
  const owner = new Array(text.length).fill(null);
  spans.forEach((s) => (s.offsets || []).forEach(([a, b]) => {
    for (let i = a; i < b; i++) if (owner[i] === null) owner[i] = s.label;
  }));
  let html = "", i = 0;
  while (i < text.length) {
    const label = owner[i];
    let j = i;
    while (j < text.length && owner[j] === label) j++;
    const piece = escapeHtml(text.slice(i, j));
    html += label === null ? piece : `<mark class="span" title="${escapeHtml(label)}">${piece}</mark>`;
    i = j;
  }
  return html;
}

async function runExtract() {
  const body = { task: $("task").value, text: $("text").value };
  const schema = $("schema").value.trim();
  if (schema) body.schema = schema;
  $("extract-status").textContent = "extracting…";
  $("run-extract").disabled = true;
  try {
    const r = await fetch("/extract", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error ? data.error.message : r.statusText);
    const rec = data.records[0];
    $("highlighted").innerHTML = highlight(rec.text, rec.spans);
    const tbody = $("result-table").querySelector("tbody");
    tbody.innerHTML = "";
    for (const s of rec.spans) {
      const tr = document.createElement("tr");
      [s.label, s.field, s.role || "", s.text, JSON.stringify(s.offsets)].forEach((v) => {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    }
    $("extract-status").textContent = `${rec.spans.length} span(s) by ${data.model}`;
  } catch (e) {
    $("extract-status").textContent = "error: " + e.message;
  } finally {
    $("run-extract").disabled = false;
  }
}

document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
  document.querySelectorAll(".panel").forEach((p) => (p.hidden = p.id !== tab.dataset.panel));
}));
$("send").addEventListener("click", send);
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("clear").addEventListener("click", () => { state.history = []; $("messages").innerHTML = ""; });
$("instruction").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(); });
$("run-extract").addEventListener("click", runExtract);
loadInfo();
