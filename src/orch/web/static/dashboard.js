// The dashboard's one script: live regions refreshed on the server's change events, actions sent
// as JSON with the session's CSRF token after a confirmation, the sign-in form, the log tail.
"use strict";
(function () {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function toast(text, ok) {
    const el = document.getElementById("toast");
    if (!el) return;
    el.textContent = text;
    el.className = "toast " + (ok ? "ok" : "bad");
    el.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.hidden = true; }, ok ? 4000 : 10000);
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(body),
    });
    let data = {};
    try { data = await response.json(); } catch (_) { /* an empty or non-JSON answer */ }
    // a session that has ended: sign in again (a refused sign-in is answered where it was made)
    if (response.status === 401 && url !== "/session") { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
    if (!response.ok) throw new Error(data.error || response.status + " " + response.statusText);
    return data;
  }

  function fields(form) {
    const body = {};
    for (const el of form.elements) {
      if (!el.name || el.value === "") continue;
      body[el.name] = el.hasAttribute("data-number") ? Number(el.value) : el.value;
    }
    return body;
  }

  function confirmed(text) {
    const dialog = document.getElementById("confirm");
    if (!dialog || !dialog.showModal) return Promise.resolve(window.confirm(text));
    document.getElementById("confirm-text").textContent = text;
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => { resolve(dialog.returnValue === "confirm"); refreshPending(); }, { once: true });
      dialog.showModal();
    });
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target.closest("form.action");
    if (!form) return;
    event.preventDefault();
    if (!form.reportValidity()) return;
    if (!(await confirmed(form.dataset.confirm || "Are you sure?"))) return;
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try {
      const data = await post(form.dataset.endpoint, fields(form));
      toast(data.recorded === false ? "Already recorded: nothing changed." : "Done.", true);
      form.reset();
      if (form.hasAttribute("data-goto-task") && data.key) { location.href = "/tasks/" + data.key; return; }
      document.activeElement && document.activeElement.blur();
      refreshAll();
    } catch (error) {
      toast(error.message, false);
    } finally {
      if (button) button.disabled = false;
    }
  });

  // -- live regions ------------------------------------------------------------------------
  let pending = false;

  function busy(region) {
    const dialog = document.getElementById("confirm");
    return (dialog && dialog.open) || region.contains(document.activeElement);
  }

  async function refresh(region) {
    if (busy(region)) { pending = true; return; }
    const response = await fetch(region.dataset.live, { credentials: "same-origin" });
    if (response.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); return; }
    if (!response.ok || busy(region)) { pending = pending || busy(region); return; }
    region.innerHTML = await response.text();
    document.dispatchEvent(new CustomEvent("orch:refreshed"));
  }

  function refreshAll() { document.querySelectorAll("[data-live]").forEach((r) => refresh(r).catch(() => {})); }
  function refreshPending() { if (pending) { pending = false; refreshAll(); } }
  document.addEventListener("focusout", () => setTimeout(refreshPending, 0));

  function follow() {
    if (!document.querySelector("[data-live]")) return;
    const state = document.getElementById("live-state");
    const source = new EventSource("/events");
    // the count of changes the page was rendered at: a change between rendering it and the
    // stream opening shows as a first event with a later count
    let shown = Number(document.body.dataset.changes || "-1");
    source.addEventListener("change", (event) => {
      if (state) { state.textContent = "live"; state.className = "live on"; }
      const count = Number(event.data);
      if (count === shown) return;
      shown = count;
      refreshAll();
    });
    source.onerror = () => { if (state) { state.textContent = "reconnecting…"; state.className = "live off"; } };
  }

  // -- the agent's log ---------------------------------------------------------------------
  function tail() {
    const log = document.getElementById("log");
    if (!log) return;
    const state = document.getElementById("log-state");
    let source = null;
    let runs = null;
    function open() {
      if (source) source.close();
      log.textContent = "";
      source = new EventSource(log.dataset.logSrc);
      if (state) state.textContent = "(following)";
      source.addEventListener("line", (event) => {
        const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
        log.append(event.data + "\n");
        while (log.childNodes.length > 2000) log.removeChild(log.firstChild);
        if (atEnd) log.scrollTop = log.scrollHeight;
      });
      source.addEventListener("end", () => {
        source.close();
        source = null;
        if (state) state.textContent = "(the run has ended)";
      });
    }
    function check() {
      const article = document.querySelector("article[data-runs]");
      const now = article ? article.dataset.runs : null;
      if (now !== runs) { runs = now; open(); }
    }
    check();
    document.addEventListener("orch:refreshed", check);
  }

  // -- signing in and out ------------------------------------------------------------------
  function signIn() {
    const form = document.getElementById("sign-in");
    if (!form) return;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = document.getElementById("sign-in-error");
      error.hidden = true;
      try {
        await post("/session", { token: form.elements.token.value });
        location.href = form.dataset.next || "/";
      } catch (e) {
        error.textContent = e.message;
        error.hidden = false;
      }
    });
  }

  document.addEventListener("click", async (event) => {
    if (!event.target.closest("[data-sign-out]")) return;
    try { await post("/session/end", {}); } catch (_) { /* signed out either way */ }
    location.href = "/login";
  });

  signIn();
  follow();
  tail();
})();
