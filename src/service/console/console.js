// The leases console: a client of the HTTP API (docs/console.md), no framework.
// It polls GET /v1/events (what this server saw) and GET /v1/list (the live leases
// under a prefix), diffs successive lists to see what other servers of the store did,
// draws one page of leases at a time, and revokes with POST /v1/revoke. Data from the
// server is only ever put into the page as text (textContent), never as HTML.
"use strict";

(function () {
  const PAGE_SIZE = 100;
  const LIST_LIMIT = 10000;
  const TIMELINE_MAX = 500;
  const MIN_POLL_MS = 1000;
  const TOKEN_KEY = "leases-console-token";

  const $ = (id) => document.getElementById(id);
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    prefix: "",
    filter: "",
    page: 0,
    leases: [],        // the last list, each with `expiresAt` (performance.now() ms)
    known: null,       // key -> {token, revoked} of the last list (null: none yet)
    truncated: false,
    lastSeq: 0,        // the last server event read
    lastToken: new Map(), // key -> the largest token seen for it (BigInt)
    timeline: [],      // newest first
    seen: new Set(),   // "kind key token" of server events, so lists do not repeat them
    armed: null,       // the key whose revoke button awaits its confirming click
    armedTimer: 0,
  };

  // ---- the API -------------------------------------------------------------------

  async function api(method, path, body) {
    const headers = { accept: "application/json" };
    if (state.token) headers.authorization = "Bearer " + state.token;
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(path, {
      method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let json = null;
    try { json = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) {
      const error = new Error((json && json.error && json.error.message) || response.statusText);
      error.status = response.status;
      throw error;
    }
    return json;
  }

  // A refused token is forgotten at once (and never shown); without one, say why.
  function unauthorized(error) {
    if (error.status !== 401) return false;
    if (state.token) {
      setToken("");
      say("the server refused that bearer token; type it again", true);
    } else {
      say("this server needs the bearer token even to read (serve it with --console to " +
        "read without one); type the token above", true);
    }
    return true;
  }

  // ---- the token -----------------------------------------------------------------

  function setToken(token) {
    state.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    const mode = $("mode");
    mode.textContent = token ? "token set: revoke enabled" : "read-only";
    mode.classList.toggle("armed", !!token);
    drawRows();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("token-input");
    const token = input.value.trim();
    input.value = "";
    setToken(token);
    say(token ? "token set (kept in this tab only)" : "", false);
    poll();
  });
  $("token-forget").addEventListener("click", () => { setToken(""); say("token forgotten", false); });

  // ---- messages and small helpers ------------------------------------------------

  function say(text, bad) {
    const message = $("message");
    message.textContent = text;
    message.classList.toggle("bad", !!bad);
  }

  function health(text, ok) {
    const el = $("health");
    el.textContent = text;
    el.className = "health " + (ok ? "ok" : "bad");
  }

  function big(token) {
    try { return BigInt(token); } catch (e) { return 0n; }
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clock(unixMs) {
    const d = new Date(unixMs);
    const pad = (n, w) => String(n).padStart(w || 2, "0");
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) +
      "." + pad(d.getMilliseconds(), 3);
  }

  function holder(lease) {
    if (lease.metadata !== null && lease.metadata !== undefined) return lease.metadata;
    return "(binary, base64) " + lease.metadata_base64;
  }

  // ---- the timeline --------------------------------------------------------------

  // Adds one entry; a grant-like entry whose token is larger than the last token seen
  // for its key is a takeover.
  function record(entry) {
    const token = big(entry.token);
    const grant = entry.kind === "granted" || entry.kind === "appeared" ||
      entry.kind === "changed_hands";
    const previous = state.lastToken.get(entry.key);
    if (grant && previous !== undefined && token > previous) entry.takeoverOf = previous;
    if (previous === undefined || token > previous) state.lastToken.set(entry.key, token);
    state.timeline.unshift(entry);
    if (state.timeline.length > TIMELINE_MAX) state.timeline.length = TIMELINE_MAX;
  }

  function drawTimeline() {
    const list = $("timeline");
    const items = state.timeline.map((entry) => {
      const li = el("li");
      li.dataset.kind = entry.kind;
      li.dataset.key = entry.key;
      li.dataset.token = entry.token;
      const head = el("div", "tl-head");
      head.append(el("span", "tl-time", clock(entry.at)));
      head.append(el("span", "tl-kind " + entry.kind, entry.kind.replace("_", " ")));
      head.append(el("span", "tl-key", entry.key));
      const body = el("div", "tl-body");
      body.append(el("span", "tl-token", "token " + entry.token));
      if (entry.takeoverOf !== undefined) {
        body.append(el("span", "takeover", "takeover: " + entry.takeoverOf + " → " + entry.token));
      }
      body.append(el("span", "tl-source", entry.source + (entry.detail ? " · " + entry.detail : "")));
      li.append(head, body);
      return li;
    });
    list.replaceChildren(...items);
  }

  async function pollEvents() {
    const answer = await api("GET", "/v1/events?after=" + state.lastSeq);
    if (answer.last < state.lastSeq) state.lastSeq = 0; // the server restarted
    for (const e of answer.events) {
      state.lastSeq = Math.max(state.lastSeq, e.seq);
      if (state.prefix && !e.key.startsWith(state.prefix)) continue;
      state.seen.add(e.kind + " " + e.key + " " + e.token);
      if (e.kind !== "granted" && e.kind !== "reattached") state.seen.add("ended " + e.key + " " + e.token);
      record({ at: e.at_unix_ms, kind: e.kind, key: e.key, token: e.token,
        detail: (e.via ? "via " + e.via : "") + (e.detail ? " " + e.detail : ""),
        source: "server" });
    }
    return answer.events.length > 0;
  }

  // What changed between two lists: keys that appeared, changed hands, were revoked or
  // went away, unless this server's events already told.
  function diff(leases) {
    const now = Date.now();
    const next = new Map(leases.map((l) => [l.key, { token: l.token, revoked: l.revoked }]));
    if (state.known === null) {
      for (const l of leases) {
        const t = big(l.token);
        const p = state.lastToken.get(l.key);
        if (p === undefined || t > p) state.lastToken.set(l.key, t);
      }
      state.known = next;
      return false;
    }
    let changed = false;
    const note = (kind, key, token, seenAs) => {
      if (state.seen.has(seenAs + " " + key + " " + token)) return;
      record({ at: now, kind, key, token, detail: "", source: "list" });
      changed = true;
    };
    const lastKey = leases.length ? leases[leases.length - 1].key : "";
    for (const [key, was] of state.known) {
      if (!next.has(key) && !(state.truncated && key > lastKey)) note("gone", key, was.token, "ended");
    }
    for (const l of leases) {
      const was = state.known.get(l.key);
      if (!was) note("appeared", l.key, l.token, "granted");
      else if (was.token !== l.token) note("changed_hands", l.key, l.token, "granted");
      else if (!was.revoked && l.revoked) note("revoked", l.key, l.token, "revoked");
    }
    state.known = next;
    return changed;
  }

  // ---- the leases ----------------------------------------------------------------

  async function pollList() {
    const query = "prefix=" + encodeURIComponent(state.prefix) + "&limit=" + LIST_LIMIT;
    const answer = await api("GET", "/v1/list?" + query);
    const at = performance.now();
    for (const l of answer.leases) l.expiresAt = at + l.expires_in_ms;
    const changed = diff(answer.leases);
    state.truncated = answer.leases.length >= LIST_LIMIT;
    state.leases = answer.leases;
    return changed;
  }

  function visible() {
    const f = state.filter.toLowerCase();
    if (!f) return state.leases;
    return state.leases.filter((l) =>
      l.key.toLowerCase().includes(f) || (l.metadata || "").toLowerCase().includes(f));
  }

  function leftText(lease) {
    const left = lease.expiresAt - performance.now();
    if (left <= 0) return ["expired", "left gone"];
    return [(left / 1000).toFixed(1) + " s", left < lease.ttl_ms / 4 ? "left low" : "left"];
  }

  function drawRows() {
    const shown = visible();
    const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
    state.page = Math.min(state.page, pages - 1);
    const start = state.page * PAGE_SIZE;
    const rows = shown.slice(start, start + PAGE_SIZE).map((lease) => {
      const tr = el("tr", lease.revoked ? "revoked" : "");
      tr.dataset.key = lease.key;
      tr.append(el("td", "key", lease.key));
      tr.append(el("td", "holder", holder(lease)));
      tr.append(el("td", "token", lease.token));
      const [text, cls] = leftText(lease);
      tr.append(el("td", cls, text));
      tr.append(el("td", "flag", lease.revoked ? "revoked" : "—"));
      const cell = el("td");
      const button = el("button", "revoke", state.armed === lease.key ? "confirm" : "revoke");
      button.type = "button";
      button.classList.toggle("armed", state.armed === lease.key);
      button.disabled = !state.token || lease.revoked;
      button.title = state.token ? "revoke this lease (click twice)" : "type the bearer token to revoke";
      button.addEventListener("click", () => revoke(lease.key));
      cell.append(button);
      tr.append(cell);
      return tr;
    });
    $("rows").replaceChildren(...rows);
    const total = state.leases.length;
    $("count").textContent = (shown.length === total ? total : shown.length + " of " + total) +
      " lease" + (total === 1 ? "" : "s") + (state.truncated ? " (the first " + LIST_LIMIT + ")" : "");
    $("page").textContent = "page " + (state.page + 1) + " of " + pages;
    $("first").disabled = $("prev").disabled = state.page === 0;
    $("last").disabled = $("next").disabled = state.page >= pages - 1;
  }

  // Only the countdown cells of the page on screen, a few times a second.
  function tick() {
    const byKey = new Map(state.leases.map((l) => [l.key, l]));
    for (const tr of $("rows").children) {
      const lease = byKey.get(tr.dataset.key);
      if (!lease) continue;
      const [text, cls] = leftText(lease);
      const cell = tr.children[3];
      cell.textContent = text;
      cell.className = cls;
    }
  }

  async function revoke(key) {
    if (state.armed !== key) {
      state.armed = key;
      clearTimeout(state.armedTimer);
      state.armedTimer = setTimeout(() => { state.armed = null; drawRows(); }, 5000);
      drawRows();
      return;
    }
    state.armed = null;
    clearTimeout(state.armedTimer);
    try {
      const answer = await api("POST", "/v1/revoke", { key });
      say(answer.revoked ? "revoked " + key : key + " was not held", false);
    } catch (error) {
      if (!unauthorized(error)) say("revoke of " + key + " failed: " + error.message, true);
    }
    poll();
  }

  // ---- controls and the polling loop ---------------------------------------------

  function go(page) { state.page = Math.max(0, page); drawRows(); }
  $("first").addEventListener("click", () => go(0));
  $("prev").addEventListener("click", () => go(state.page - 1));
  $("next").addEventListener("click", () => go(state.page + 1));
  $("last").addEventListener("click", () => go(Number.MAX_SAFE_INTEGER));
  $("filter").addEventListener("input", (event) => { state.filter = event.target.value; go(0); });
  let prefixTimer = 0;
  $("prefix").addEventListener("input", (event) => {
    clearTimeout(prefixTimer);
    prefixTimer = setTimeout(() => {
      state.prefix = event.target.value.trim();
      state.known = null; // a new prefix: no diff against the old one
      state.page = 0;
      poll();
    }, 300);
  });

  let running = null;
  let timer = 0;
  let interval = MIN_POLL_MS;

  // One round: events first (so that a list does not repeat what they told), then the
  // list. The next round comes after at least MIN_POLL_MS, longer when a round is slow
  // (a list of 10k leases), so that the console never loads the server much.
  function poll() {
    if (running) return running;
    clearTimeout(timer);
    const started = performance.now();
    running = (async () => {
      try {
        const events = await pollEvents();
        const changed = await pollList();
        health("live · " + new Date().toLocaleTimeString(), true);
        if (events || changed) drawTimeline();
        drawRows();
      } catch (error) {
        if (!unauthorized(error)) health("no answer: " + error.message, false);
      } finally {
        interval = Math.max(MIN_POLL_MS, 4 * (performance.now() - started));
        running = null;
        timer = setTimeout(poll, interval);
      }
    })();
    return running;
  }

  setToken(state.token);
  setInterval(tick, 200);
  poll();
})();
