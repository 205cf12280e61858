// hana mesh status page. Plain JavaScript, no build step, no dependency.
// It talks to the node that served it, through the public API only
// (docs/api.md), as any client does:
//   GET  /v1/whoami            who am I (name, role): which buttons to offer
//   GET  /v1/status            this node's view: controller, term, indexes
//   GET  /v1/members           members with found, lag, health
//   GET  /v1/history           the recent changes (then the watch keeps them live)
//   WS   /v1/watch?since=REV   live change records (text frames)
//   GET  /v1/saves, POST /v1/saves, POST /v1/saves/{name}/restore,
//   GET  /v1/saves/{name} (export), DELETE /v1/saves/{name}
//   POST /v1/undo, POST /v1/redo
//   GET  /v1/audit
//   GET  /v1/kv?prefix=P
//   GET  /v1/conflicts, POST /v1/conflicts/{id}/resolve (operator), GET /v1/outbox
// Reads ask for consistency=local, so a node cut off from its controller
// still shows what it has (and says it is cut off). Writes go to this node,
// which forwards them to the controller. The token stays in this tab
// (sessionStorage) and is sent as `Authorization: Bearer`.
"use strict";

(() => {
  const TOKEN_KEY = "hana.token";
  const ROLES = ["reader", "operator", "admin"];
  // As the node judges a member (mesh/adapter.py): heard within 2 s, at most
  // 250 entries behind.
  const HEALTHY_CONTACT_MS = 2000;
  const HEALTHY_LAG = 250;
  const POLL_MS = 500;
  // Faster while a member looks late, so a dead one shows soon after the
  // node gives up on it.
  const POLL_SUSPICIOUS_MS = 250;
  const SUSPICIOUS_CONTACT_MS = 1000;
  const POLL_HIDDEN_MS = 5000;
  const MAX_CHANGES = 200;
  const MAX_AUDIT = 50;
  const MAX_KEYS = 500;
  const REQUEST_TIMEOUT_MS = 10000;
  const WRITE_TIMEOUT_MS = 35000;

  const $ = (id) => document.getElementById(id);

  const state = {
    ident: null, // {name, role} or null when no identity is known
    anonymousAllowed: null, // a tokenless client is an operator here
    status: null,
    members: null,
    lastApplied: null,
    revision: 0, // the last change revision shown
    ws: null,
    wsRetry: 0,
    historyPoll: null,
    authors: new Set(),
    keysPrefix: null,
    keys: new Map(),
    sideRefresh: 0,
    conflicts: [], // the open conflicts
    outboxQueued: 0,
  };

  // -- small helpers -------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function short(value, max = 120) {
    let text;
    try {
      text = value === undefined ? "" : JSON.stringify(value);
    } catch (_) {
      text = String(value);
    }
    return text.length > max ? text.slice(0, max - 1) + "…" : text;
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return "never";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    if (ms < 3600000) return `${Math.round(ms / 60000)} min`;
    return `${(ms / 3600000).toFixed(1)} h`;
  }

  function ago(t) {
    const d = Date.now() - t;
    if (d < 0) return "just now";
    if (d < 1500) return "just now";
    if (d < 60000) return `${Math.round(d / 1000)} s ago`;
    if (d < 3600000) return `${Math.round(d / 60000)} min ago`;
    const date = new Date(t);
    const today = new Date();
    const hm = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (date.toDateString() === today.toDateString()) return `today ${hm}`;
    return `${date.toLocaleDateString()} ${hm}`;
  }

  // A <time> that says "12 s ago" and keeps saying it right.
  function when(t) {
    if (typeof t !== "number" || !isFinite(t)) return el("span", { class: "dim", text: "?" });
    if (t <= 0) return el("span", { class: "dim", text: "at the start" });
    return el("time", {
      "data-t": t,
      datetime: new Date(t).toISOString(),
      title: new Date(t).toLocaleString(),
      text: ago(t),
    });
  }

  function refreshTimes() {
    for (const node of document.querySelectorAll("time[data-t]")) {
      node.textContent = ago(Number(node.dataset.t));
    }
  }

  function showError(id, error) {
    const node = $(id);
    if (!node) return;
    if (error) {
      node.textContent = describe(error);
      node.hidden = false;
    } else {
      node.textContent = "";
      node.hidden = true;
    }
  }

  let noticeTimer = null;
  function notice(text, isError) {
    const node = $("notice");
    node.textContent = text;
    node.classList.toggle("error", Boolean(isError));
    node.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => {
      node.hidden = true;
    }, isError ? 15000 : 6000);
  }

  function describe(error) {
    if (error instanceof ApiFailure) {
      return error.status ? `${error.message} (${error.status} ${error.code})` : error.message;
    }
    return String(error && error.message ? error.message : error);
  }

  function can(role) {
    return state.ident !== null && ROLES.indexOf(state.ident.role) >= ROLES.indexOf(role);
  }

  function pageOf(api) {
    return api ? `${location.protocol}//${api}/` : null;
  }

  // -- the API -------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, code, message, detail) {
      super(message);
      this.status = status;
      this.code = code;
      this.detail = detail || {};
    }
  }

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (_) {
      return null;
    }
  }

  async function api(method, path, body, timeout) {
    const headers = { Accept: "application/json" };
    const presented = token();
    if (presented) headers.Authorization = `Bearer ${presented}`;
    const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const controller = new AbortController();
    const limit = timeout || (method === "GET" ? REQUEST_TIMEOUT_MS : WRITE_TIMEOUT_MS);
    const timer = setTimeout(() => controller.abort(), limit);
    init.signal = controller.signal;
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (exc) {
      const why = exc && exc.name === "AbortError" ? `no answer within ${limit / 1000} s` : "cannot reach it";
      throw new ApiFailure(0, "unreachable", `this node (${location.host}) did not answer: ${why}`);
    } finally {
      clearTimeout(timer);
    }
    const text = await resp.text();
    let doc = null;
    if (text) {
      try {
        doc = JSON.parse(text);
      } catch (_) {
        doc = null;
      }
    }
    if (!resp.ok) {
      const err = doc && doc.error ? doc.error : {};
      const failure = new ApiFailure(
        resp.status,
        err.code || `http_${resp.status}`,
        err.message || `${resp.status} ${resp.statusText}`,
        err,
      );
      if (resp.status === 401 && presented && presented === token()) tokenRefused(failure);
      throw failure;
    }
    return doc;
  }

  // A token the node refuses is dropped at once: polling with it would count
  // as failed logins and lock this address out.
  function tokenRefused(failure) {
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      /* storage unavailable: nothing kept */
    }
    showError("login-error", new Error(`the node refused the token, so it is forgotten: ${failure.message}`));
    state.ident = null;
    identify();
  }

  function encodeName(name) {
    return encodeURIComponent(name);
  }

  // -- who am I ------------------------------------------------------------------

  async function identify() {
    if (state.anonymousAllowed === null) await probeAnonymous();
    try {
      state.ident = await api("GET", "/v1/whoami");
    } catch (exc) {
      state.ident = null;
      if (!(exc instanceof ApiFailure && exc.status === 401)) showError("login-error", exc);
    }
    renderIdentity();
    startChanges();
  }

  // Whether this node lets a client without a token read (a loopback API
  // without a tokens file): then the watch WebSocket works, since a browser
  // cannot put a token on a WebSocket. A request without a token never
  // counts as a failed login.
  async function probeAnonymous() {
    try {
      const resp = await fetch("/v1/whoami", { cache: "no-store", credentials: "omit" });
      if (resp.ok) state.anonymousAllowed = true;
      else if (resp.status === 401) state.anonymousAllowed = false;
    } catch (_) {
      /* unreachable: asked again on the next identify */
    }
  }

  function renderIdentity() {
    const ident = state.ident;
    $("who-name").textContent = ident ? ident.name : "not logged in";
    $("who-role").textContent = ident ? ident.role : "";
    $("who-role").dataset.role = ident ? ident.role : "";
    document.body.dataset.role = ident ? ident.role : "none";
    const loggedIn = Boolean(token()) && ident !== null;
    $("logout").hidden = !loggedIn;
    $("login").hidden = loggedIn && ident.role === "admin";
    let hint = "";
    if (!ident) {
      hint = "This node needs a token: paste one to see the mesh.";
    } else if (!token() && ident.role === "operator") {
      hint = "Without a token you are an operator here. Paste the admin token (<data-dir>/admin-token) to restore or delete saves.";
    } else if (ident.role !== "admin") {
      hint = "Paste another token to change role.";
    }
    $("login-hint").textContent = hint;
    for (const node of document.querySelectorAll("[data-needs]")) {
      node.hidden = !can(node.dataset.needs);
    }
    renderStacks();
    renderSaves(lastSaves);
    renderConflicts();
  }

  async function login(event) {
    event.preventDefault();
    const input = $("token-input");
    const presented = input.value.trim();
    input.value = "";
    if (!presented) return;
    if (/\s/.test(presented)) {
      showError("login-error", new Error("a token has no spaces"));
      return;
    }
    const before = token();
    sessionStorage.setItem(TOKEN_KEY, presented);
    try {
      state.ident = await api("GET", "/v1/whoami");
      showError("login-error", null);
      notice(`Logged in as ${state.ident.name} (${state.ident.role}).`);
    } catch (exc) {
      if (!(exc instanceof ApiFailure && exc.status === 401)) {
        if (before) sessionStorage.setItem(TOKEN_KEY, before);
        else sessionStorage.removeItem(TOKEN_KEY);
        showError("login-error", exc);
      }
      // a 401 has already dropped the token and said so
    }
    renderIdentity();
    startChanges();
    refreshSide(true);
  }

  function logout() {
    sessionStorage.removeItem(TOKEN_KEY);
    showError("login-error", null);
    state.ident = null;
    if (state.anonymousAllowed === false) forget();
    identify().then(() => refreshSide(true));
  }

  // Logged out of a node that shows nothing without a token: clear what the
  // token let this tab see.
  function forget() {
    state.status = null;
    state.members = null;
    state.lastApplied = null;
    state.revision = 0;
    state.keysPrefix = null;
    state.keys = new Map();
    state.authors = new Set();
    lastSaves = null;
    for (const id of ["change-list", "audit", "discovered", "pending"]) $(id).replaceChildren();
    for (const sel of ["#members tbody", "#saves tbody", "#keys tbody"]) document.querySelector(sel).replaceChildren();
    $("keys-note").textContent = "";
    $("members-note").textContent = "";
  }

  // -- the mesh ------------------------------------------------------------------

  // One look at the mesh (also asked for by the watch's status messages).
  async function refreshMesh() {
    try {
      const [status, members] = await Promise.all([api("GET", "/v1/status"), api("GET", "/v1/members")]);
      state.status = status;
      state.members = members;
      showError("mesh-error", null);
      renderMesh();
      if (status.applied_index !== state.lastApplied) {
        state.lastApplied = status.applied_index;
        refreshSide(false);
      }
    } catch (exc) {
      showError("mesh-error", exc);
      renderAlerts(exc);
      for (const row of document.querySelectorAll("#members tbody tr")) row.classList.add("stale");
    }
  }

  async function poll() {
    await refreshMesh();
    const idle = document.hidden || (state.ident === null && state.anonymousAllowed === false);
    setTimeout(poll, idle ? POLL_HIDDEN_MS : suspicious() ? POLL_SUSPICIOUS_MS : POLL_MS);
  }

  function suspicious() {
    const members = state.members ? state.members.members || [] : [];
    return members.some(
      (m) =>
        m.healthy !== false &&
        m.last_contact_ms > SUSPICIOUS_CONTACT_MS &&
        m.last_contact_ms < HEALTHY_CONTACT_MS + SUSPICIOUS_CONTACT_MS,
    );
  }

  // How this page judges a member: the controller's own verdict when this
  // node is the controller (the `healthy` of /v1/members); elsewhere what
  // this node hears itself (the controller, and itself).
  function health(m, status) {
    const contact = m.last_contact_ms;
    if (m.healthy === true) return { state: "healthy", label: "healthy", why: `heard ${duration(contact)} ago` };
    if (m.healthy === false) {
      if (contact === null || contact === undefined || contact > HEALTHY_CONTACT_MS) {
        return { state: "unhealthy", label: "down", why: `no contact for ${duration(contact)}` };
      }
      return { state: "unhealthy", label: "behind", why: `${m.lag} entries behind the controller` };
    }
    if (m.id === status.id) {
      return cutOff(status)
        ? { state: "unhealthy", label: "cut off", why: "this node hears no controller" }
        : { state: "healthy", label: "healthy", why: "this node, following the controller" };
    }
    if (contact === null || contact === undefined) {
      return { state: "unknown", label: "unknown here", why: "this node does not hear it; the controller's page shows its health" };
    }
    if (contact > HEALTHY_CONTACT_MS) {
      return { state: "unhealthy", label: "down", why: `this node has not heard it for ${duration(contact)}` };
    }
    return { state: "healthy", label: "healthy", why: `heard ${duration(contact)} ago` };
  }

  // This node hears no controller (the `connected` of /v1/status where the
  // node gives it; otherwise from the leader's last contact).
  function cutOff(status) {
    if (!status.leader) return true;
    if (typeof status.connected === "boolean") return !status.connected;
    if (status.leader === status.id) return false;
    const leader = (status.members || []).find((m) => m.id === status.leader);
    const contact = leader ? leader.last_contact_ms : null;
    return contact === null || contact === undefined || contact > HEALTHY_CONTACT_MS;
  }

  function renderMesh() {
    const status = state.status;
    const members = state.members;
    $("cluster").textContent = status.cluster;
    $("node-id").textContent = status.id;
    document.title = `hana mesh: ${status.id}`;
    const controller = status.leader || null;
    const cut = cutOff(status);
    $("controller").textContent = controller || "none";
    $("controller").classList.toggle("bad", !controller || cut);
    const conn = $("connection");
    conn.textContent = cut ? "cut off: showing stale state" : "connected";
    conn.className = `badge ${cut ? "bad" : "good"}`;
    conn.dataset.connected = String(!cut);
    const link = $("controller-link");
    const leaderApi = members.leader_api || null;
    if (controller && controller !== status.id && leaderApi) {
      link.href = pageOf(leaderApi);
      link.hidden = false;
    } else {
      link.hidden = true;
      link.removeAttribute("href");
    }
    $("term").textContent = status.term;
    $("revision").textContent = status.revision;
    $("indexes").textContent = `${status.commit_index} / ${status.applied_index}`;

    const body = document.querySelector("#members tbody");
    const rows = [];
    for (const m of members.members || []) {
      const h = health(m, status);
      const isController = m.id === controller;
      const href = m.id === status.id ? null : pageOf(m.api);
      const name = href ? el("a", { href, title: `open ${m.id}'s page`, text: m.id }) : el("b", { text: m.id });
      rows.push(
        el(
          "tr",
          {
            "data-member": m.id,
            "data-health": h.state,
            "data-role": m.role,
            class: [isController ? "controller" : "", m.id === status.id ? "self" : "", h.state].join(" "),
          },
          el("td", {}, name, m.id === status.id ? el("span", { class: "dim", text: " (this page)" }) : null),
          el(
            "td",
            {},
            isController ? el("span", { class: "badge controller", text: "controller" }) : m.role,
          ),
          el("td", { text: m.voter ? "voter" : "learner" }),
          el("td", {}, el("span", { class: `health ${h.state}`, title: h.why, text: h.label })),
          el("td", { class: "num", text: m.lag === null || m.lag === undefined ? "—" : m.lag }),
          el("td", { class: "num", text: m.id === status.id ? "—" : duration(m.last_contact_ms) }),
          el("td", { text: m.found || "?" }),
          el("td", { class: "dim", text: m.api || "?" }),
        ),
      );
    }
    body.replaceChildren(...rows);
    const isController = controller === status.id;
    $("members-note").textContent = isController
      ? "Health as the controller sees every member."
      : "This node is not the controller: it hears the controller only, so other members' health is on the controller's page.";
    const discovered = members.discovered || [];
    $("discovered-box").hidden = discovered.length === 0;
    $("discovered").replaceChildren(
      ...discovered.map((d) => el("li", { text: `${d.id} (${d.found}, ${d.state}) raft ${d.raft}` })),
    );
    renderPending(members.pending || []);
    renderAlerts(null);
  }

  // Machines pending approval (GET /v1/members "pending"); an admin approves one
  // with POST /v1/trust/approve (it then gets a certificate and joins as a learner).
  function renderPending(pending) {
    $("pending-box").hidden = pending.length === 0;
    $("pending").replaceChildren(
      ...pending.map((p) =>
        el(
          "li",
          { "data-pending": p.id },
          el("b", { text: p.id }),
          el("span", { text: ` at ${p.address || "?"}, key sha256 ${p.fingerprint}, first seen ` }),
          when(p.first_seen),
          can("admin")
            ? el("button", { type: "button", class: "approve", "data-pending": p.id, onclick: () => approvePending(p.id, p.fingerprint), text: "Approve" })
            : null,
        ),
      ),
    );
  }

  async function approvePending(id, fingerprint) {
    const ok = await confirmAction(
      `Approve ${id}? Its key's sha256 is ${fingerprint}: compare it with the one the machine printed. ` +
        "It then gets a certificate of this cluster and joins as a learner.",
      "Approve",
    );
    if (!ok) return;
    try {
      await api("POST", "/v1/trust/approve", { id });
      notice(`Approved ${id}.`);
    } catch (exc) {
      notice(`Approve failed: ${describe(exc)}`, true);
    }
    await refreshMesh();
  }

  function renderAlerts(failure) {
    const alerts = [];
    if (failure && failure.status === 401) {
      alerts.push({ level: "warn", kind: "login", text: "Log in with a token to see the mesh." });
    } else if (failure && failure.status) {
      alerts.push({ level: "bad", kind: "error", text: `This node answered with an error: ${describe(failure)}.` });
    } else if (failure) {
      alerts.push({ level: "bad", kind: "unreachable", text: `${describe(failure)}. The page shows its last view.` });
    }
    const status = state.status;
    const members = state.members;
    if (status && members && !failure) {
      if (cutOff(status)) {
        const last = (status.members || []).find((m) => m.id === status.leader);
        const since = last && last.last_contact_ms !== null ? ` (last heard ${duration(last.last_contact_ms)} ago)` : "";
        alerts.push({
          level: "bad",
          kind: "cut-off",
          text: `This node is cut off: it hears no controller${since}. It shows its last state; writes wait for a controller and may fail.`,
        });
      }
      const critical = state.conflicts.filter((c) => c.critical);
      if (critical.length) {
        alerts.push({
          level: "bad",
          kind: "conflict",
          text: `${critical.length} critical conflict(s) wait for a person: ${critical
            .slice(0, 3)
            .map((c) => c.key)
            .join(", ")}. See Conflicts below.`,
        });
      }
      if (state.outboxQueued) {
        alerts.push({
          level: "warn",
          kind: "outbox",
          text: `${state.outboxQueued} write(s) made here while cut off wait to replay when a controller is heard.`,
        });
      }
      for (const m of members.members || []) {
        const h = health(m, status);
        if (m.id === status.id || h.state !== "unhealthy") continue;
        alerts.push({ level: "bad", kind: h.label, member: m.id, text: `${m.id} is ${h.label}: ${h.why}.` });
      }
    }
    const box = $("alerts");
    box.replaceChildren(
      ...alerts.map((a) =>
        el("p", { class: `alert ${a.level}`, "data-kind": a.kind, "data-member": a.member }, a.text),
      ),
    );
    box.dataset.count = String(alerts.length);
  }

  // -- changes: the history, then the watch ---------------------------------------

  let changesStarted = false;

  async function startChanges() {
    if (changesStarted || state.ident === null) return;
    changesStarted = true;
    await loadHistory();
    if (state.anonymousAllowed || !token()) connectWatch();
    else pollHistory(); // a browser cannot put a token on a WebSocket
  }

  async function loadHistory() {
    try {
      const status = await api("GET", "/v1/status");
      let since = Math.max(1, status.revision - 49);
      let doc;
      try {
        doc = await api("GET", `/v1/history?since=${since}&consistency=local`);
      } catch (exc) {
        if (!(exc instanceof ApiFailure && exc.code === "compacted")) throw exc;
        since = exc.detail.oldest || status.revision;
        doc = await api("GET", `/v1/history?since=${since}&consistency=local`);
      }
      for (const rec of doc.records) addChange(rec, false);
      state.revision = Math.max(state.revision, doc.revision);
      showError("changes-error", null);
    } catch (exc) {
      showError("changes-error", exc);
      changesStarted = false;
      setTimeout(startChanges, 2000);
    }
  }

  function setLive(text, cls) {
    const badge = $("live-state");
    badge.textContent = text;
    badge.className = `badge ${cls}`;
    badge.dataset.state = cls;
  }

  function connectWatch() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/v1/watch?since=${state.revision + 1}`;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (exc) {
      showError("changes-error", exc);
      return;
    }
    state.ws = ws;
    ws.onopen = () => {
      state.wsRetry = 0;
      setLive("live", "live");
      showError("changes-error", null);
    };
    ws.onmessage = (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (_) {
        showError("changes-error", new Error("the watch sent something that is not JSON"));
        return;
      }
      if (msg.error) {
        showError("changes-error", new ApiFailure(0, msg.error.code, msg.error.message));
        return;
      }
      if (msg.type && msg.type !== "change") {
        if (msg.type === "status") refreshMesh();
        else if (msg.type === "conflict") loadConflicts();
        else if (msg.type === "outbox") loadOutbox();
        return; // live messages join the page with their issue
      }
      addChange(msg, true);
    };
    ws.onclose = (event) => {
      state.ws = null;
      if (event.code === 4410) {
        // compacted: start again from what the node holds
        state.revision = 0;
        changesStarted = false;
        $("change-list").replaceChildren();
        setLive("restarting", "warn");
        setTimeout(startChanges, 500);
        return;
      }
      state.wsRetry = Math.min(state.wsRetry + 1, 5);
      setLive("reconnecting", "warn");
      setTimeout(connectWatch, 500 * state.wsRetry);
    };
  }

  async function pollHistory() {
    setLive("polling", "live");
    try {
      const doc = await api("GET", `/v1/history?since=${state.revision + 1}&limit=500&consistency=local`);
      for (const rec of doc.records) addChange(rec, true);
      if (doc.records.length === 0) state.revision = Math.max(state.revision, doc.revision);
      showError("changes-error", null);
    } catch (exc) {
      showError("changes-error", exc);
      if (exc instanceof ApiFailure && exc.code === "compacted") state.revision = (exc.detail.oldest || 1) - 1;
    }
    if (state.ident !== null) setTimeout(pollHistory, 1000);
    else changesStarted = false;
  }

  function addChange(rec, live) {
    if (typeof rec.revision !== "number") return;
    const list = $("change-list");
    if (list.querySelector(`li[data-revision="${rec.revision}"][data-key="${CSS.escape(String(rec.key))}"]`)) return;
    state.revision = Math.max(state.revision, rec.revision);
    if (rec.author && !state.authors.has(rec.author)) {
      state.authors.add(rec.author);
      renderStacks();
    }
    const isDelete = rec.op === "delete";
    const item = el(
      "li",
      { "data-revision": rec.revision, "data-key": rec.key, class: live ? "fresh" : "" },
      el("span", { class: "rev", text: `#${rec.revision}` }),
      " ",
      when(rec.time),
      " ",
      el("b", { class: "key", text: rec.key }),
      " ",
      isDelete
        ? el("span", { class: "op delete", text: "deleted" })
        : el("code", { class: "value", title: short(rec.value, 2000), text: short(rec.value) }),
      el("span", { class: "dim", text: ` by ${rec.author || "?"} on ${rec.node || "?"}` }),
    );
    list.prepend(item);
    while (list.children.length > MAX_CHANGES) list.lastElementChild.remove();
    if (live) updateKey(rec);
  }

  function renderStacks() {
    const select = $("undo-stack");
    const chosen = select.value;
    const mine = state.ident ? state.ident.name : null;
    const options = [el("option", { value: "", text: mine ? `mine (${mine})` : "mine" })];
    for (const author of [...state.authors].sort()) {
      if (author === mine) continue;
      options.push(el("option", { value: author, text: author }));
    }
    select.replaceChildren(...options);
    select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
  }

  async function undoRedo(verb) {
    const author = $("undo-stack").value;
    const body = author ? { author } : {};
    try {
      const result = await api("POST", `/v1/${verb}`, body);
      const at = result && typeof result.revision === "number" ? ` (revision ${result.revision})` : "";
      notice(`${verb === "undo" ? "Undone" : "Redone"}${at}.`);
    } catch (exc) {
      notice(`${verb} failed: ${describe(exc)}`, true);
    }
  }

  // -- saves ---------------------------------------------------------------------

  let lastSaves = null;

  async function loadSaves() {
    try {
      lastSaves = await api("GET", "/v1/saves?consistency=local");
      showError("saves-error", null);
    } catch (exc) {
      showError("saves-error", exc);
    }
    renderSaves(lastSaves);
  }

  function renderSaves(saves) {
    const body = document.querySelector("#saves tbody");
    if (!saves) {
      body.replaceChildren();
      return;
    }
    const rows = [...saves].reverse().map((s) => {
      const buttons = el("td", { class: "buttons" });
      buttons.append(
        el("button", { type: "button", class: "export", "data-save": s.name, onclick: () => exportSave(s.name), text: "Export" }),
      );
      if (can("admin")) {
        buttons.append(
          el("button", { type: "button", class: "restore danger", "data-save": s.name, onclick: () => restoreSave(s.name), text: "Restore" }),
          el("button", { type: "button", class: "delete", "data-save": s.name, onclick: () => deleteSave(s.name), text: "Delete" }),
        );
      }
      return el(
        "tr",
        { "data-save": s.name, class: s.auto ? "auto" : "" },
        el("td", {}, el("b", { text: s.name }), s.auto ? el("span", { class: "dim", text: " recovery point" }) : null),
        el("td", {}, when(s.created)),
        el("td", { text: s.author || "?" }),
        el("td", { class: "num", text: s.revision }),
        el("td", { class: "num", text: s.keys === undefined ? "?" : s.keys }),
        buttons,
      );
    });
    body.replaceChildren(...rows);
  }

  async function createSave(event) {
    event.preventDefault();
    const input = $("save-name");
    const name = input.value.trim();
    if (!name) return;
    try {
      const meta = await api("POST", "/v1/saves", { name });
      input.value = "";
      notice(`Saved "${meta.name}" at revision ${meta.revision}.`);
    } catch (exc) {
      notice(`Save failed: ${describe(exc)}`, true);
    }
    await loadSaves();
  }

  function confirmAction(text, yes) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-yes").textContent = yes;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
      dialog.returnValue = "no";
      dialog.showModal();
    });
  }

  async function restoreSave(name) {
    const ok = await confirmAction(
      `Restore "${name}"? The show's state becomes the save's, on every member, as one change. ` +
        "A recovery point is saved first, and Undo reverts the restore.",
      "Restore",
    );
    if (!ok) return;
    try {
      const r = await api("POST", `/v1/saves/${encodeName(name)}/restore`, {});
      notice(`Restored "${name}" at revision ${r.revision}; recovery point "${r.recovery_point}".`);
    } catch (exc) {
      notice(`Restore failed: ${describe(exc)}`, true);
    }
    refreshSide(true);
  }

  async function deleteSave(name) {
    const ok = await confirmAction(`Delete the save "${name}" on every member? This cannot be undone.`, "Delete");
    if (!ok) return;
    try {
      await api("DELETE", `/v1/saves/${encodeName(name)}`);
      notice(`Deleted "${name}".`);
    } catch (exc) {
      notice(`Delete failed: ${describe(exc)}`, true);
    }
    refreshSide(true);
  }

  async function exportSave(name) {
    try {
      const headers = {};
      if (token()) headers.Authorization = `Bearer ${token()}`;
      const resp = await fetch(`/v1/saves/${encodeName(name)}?consistency=local`, {
        headers,
        cache: "no-store",
        credentials: "omit",
      });
      if (!resp.ok) {
        const doc = await resp.json().catch(() => ({}));
        throw new ApiFailure(resp.status, doc.error ? doc.error.code : "", doc.error ? doc.error.message : resp.statusText);
      }
      const url = URL.createObjectURL(await resp.blob());
      const a = el("a", { href: url, download: `${name}.hana` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (exc) {
      notice(`Export failed: ${describe(exc)}`, true);
    }
  }

  // -- audit ---------------------------------------------------------------------

  async function loadAudit() {
    try {
      const revision = state.status ? state.status.revision : (await api("GET", "/v1/status")).revision;
      let entries = [];
      // The newest entries: widen the window until enough are found.
      for (const span of [500, 5000, 50000, 500000, Infinity]) {
        const since = span === Infinity ? 0 : Math.max(0, revision - span);
        let doc;
        try {
          doc = await api("GET", `/v1/audit?since=${since}&consistency=local`);
        } catch (exc) {
          if (!(exc instanceof ApiFailure && exc.code === "compacted")) throw exc;
          doc = await api("GET", `/v1/audit?since=${exc.detail.oldest || 0}&consistency=local`);
        }
        entries = doc.entries;
        if (entries.length >= MAX_AUDIT || since === 0) break;
      }
      renderAudit(entries.slice(-MAX_AUDIT).reverse());
      showError("audit-error", null);
    } catch (exc) {
      showError("audit-error", exc);
    }
  }

  const AUDIT_COMMON = new Set(["seq", "revision", "op", "author", "role", "node", "time", "hlc"]);

  function renderAudit(entries) {
    $("audit").replaceChildren(
      ...entries.map((e) => {
        const details = Object.entries(e)
          .filter(([k]) => !AUDIT_COMMON.has(k))
          .map(([k, v]) => `${k}=${typeof v === "string" ? v : short(v, 80)}`)
          .join(" ");
        return el(
          "li",
          { "data-seq": e.seq, "data-op": e.op },
          when(e.time),
          " ",
          el("b", { text: e.op }),
          e.author ? el("span", { class: "dim", text: ` by ${e.author}${e.role ? ` (${e.role})` : ""}` }) : null,
          e.node ? el("span", { class: "dim", text: ` on ${e.node}` }) : null,
          details ? el("div", { class: "details", text: details }) : null,
        );
      }),
    );
  }

  // -- keys ----------------------------------------------------------------------

  async function loadKeys(event) {
    if (event) event.preventDefault();
    const prefix = $("keys-prefix").value.trim();
    try {
      const doc = await api("GET", `/v1/kv?prefix=${encodeURIComponent(prefix)}&consistency=local`);
      state.keysPrefix = prefix;
      state.keys = new Map(doc.items.map((item) => [item.key, item]));
      renderKeys();
      showError("keys-error", null);
    } catch (exc) {
      showError("keys-error", exc);
    }
  }

  function updateKey(rec) {
    if (state.keysPrefix === null || !String(rec.key).startsWith(state.keysPrefix)) return;
    if (rec.op === "delete") state.keys.delete(rec.key);
    else {
      const old = state.keys.get(rec.key);
      state.keys.set(rec.key, {
        key: rec.key,
        value: rec.value,
        version: old ? old.version + 1 : 1,
        mod_revision: rec.revision,
      });
    }
    renderKeys();
  }

  function renderKeys() {
    const items = [...state.keys.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    const shown = items.slice(0, MAX_KEYS);
    document.querySelector("#keys tbody").replaceChildren(
      ...shown.map((item) =>
        el(
          "tr",
          { "data-key": item.key },
          el("td", {}, el("b", { text: item.key })),
          el("td", {}, el("code", { class: "value", title: short(item.value, 2000), text: short(item.value, 80) })),
          el("td", { class: "num", text: item.version }),
          el("td", { class: "num", text: `#${item.mod_revision}` }),
        ),
      ),
    );
    $("keys-note").textContent =
      items.length > shown.length ? `${shown.length} of ${items.length} keys shown; narrow the prefix.` : `${items.length} keys`;
  }

  // -- conflicts and the outbox (a node cut off from the controller) ----------------

  async function loadConflicts() {
    try {
      const doc = await api("GET", "/v1/conflicts");
      state.conflicts = (doc.conflicts || []).filter((c) => c.status === "open");
      renderConflicts();
      showError("conflicts-error", null);
    } catch (exc) {
      if (exc instanceof ApiFailure && exc.status === 404 && exc.code !== "not_found") return; // an older node
      showError("conflicts-error", exc);
      $("conflicts-panel").hidden = false;
    }
    if (state.status && state.members) renderAlerts(null);
  }

  async function loadOutbox() {
    try {
      const doc = await api("GET", "/v1/outbox");
      const waiting = (doc.items || []).filter((i) => i.state === "queued" || i.state === "replaying");
      state.outboxQueued = waiting.length;
    } catch (_) {
      state.outboxQueued = 0; // an older node, or none to tell: nothing shown
    }
    const badge = $("outbox-count");
    badge.hidden = state.outboxQueued === 0;
    badge.textContent = `${state.outboxQueued} queued`;
    if (state.status && state.members) renderAlerts(null);
  }

  function conflictSide(side, who) {
    return el(
      "td",
      {},
      el("code", { class: "value", title: short(side.value, 2000), text: short(side.value, 60) }),
      el("div", { class: "dim", text: who }),
    );
  }

  function renderConflicts() {
    const list = [...state.conflicts].sort((a, b) => Number(Boolean(b.critical)) - Number(Boolean(a.critical)));
    const critical = list.filter((c) => c.critical).length;
    $("conflicts-panel").hidden = list.length === 0;
    const count = $("conflicts-count");
    count.textContent = `${list.length} open${critical ? `, ${critical} critical` : ""}`;
    count.className = `badge ${critical ? "bad" : "warn"}`;
    const mayResolve = can("operator");
    document.querySelector("#conflicts tbody").replaceChildren(
      ...list.map((c) => {
        const cur = c.current || {};
        const prop = c.proposed || {};
        const input = el("input", { "data-role": "value", placeholder: "JSON value", spellcheck: "false" });
        const choose = (take) => () => resolveConflict(c, take, input);
        return el(
          "tr",
          { "data-conflict": c.id, "data-key": c.key, "data-critical": String(Boolean(c.critical)), class: c.critical ? "critical" : "" },
          el(
            "td",
            {},
            el("b", { text: c.key }),
            c.critical ? el("span", { class: "badge critical", text: "critical" }) : null,
            el("div", { class: "dim", text: `${c.component}, conflict ${c.id}, edit based on version ${c.base_version ?? "?"}` }),
          ),
          conflictSide(cur, `version ${cur.version} by ${cur.author || "?"}`),
          conflictSide(prop, `by ${prop.author || "?"} on ${prop.node || "?"}`),
          el(
            "td",
            {},
            el(
              "div",
              { class: "choice", hidden: !mayResolve },
              el("button", { type: "button", "data-take": "current", onclick: choose("current"), text: "Keep current" }),
              el("button", { type: "button", "data-take": "proposed", onclick: choose("proposed"), text: "Take offline edit" }),
              input,
              el("button", { type: "button", "data-take": "value", onclick: choose("value"), text: "Set value" }),
            ),
            mayResolve ? null : el("span", { class: "dim", text: "an operator resolves it" }),
          ),
        );
      }),
    );
  }

  async function resolveConflict(c, take, input) {
    const body = { take };
    if (take === "value") {
      try {
        body.value = JSON.parse(input.value);
      } catch (_) {
        notice(`Not JSON: ${short(input.value, 60)} (quote strings: "text")`, true);
        return;
      }
    }
    try {
      const r = await api("POST", `/v1/conflicts/${encodeName(String(c.id))}/resolve`, body);
      const what = { current: "kept the current value", proposed: "took the offline edit", value: "set the value" }[take];
      notice(`Conflict ${c.id} on ${c.key} resolved: ${what} (revision ${r.revision}).`);
    } catch (exc) {
      notice(`Resolving conflict ${c.id} failed: ${describe(exc)}`, true);
    }
    await loadConflicts();
  }

  // -- refreshing what has no watch -----------------------------------------------

  // Saves and the audit trail change without a change record (a save changes
  // no state): reload them when this node applies something, at most every 2 s.
  let sideTimer = null;
  function refreshSide(now) {
    if (state.ident === null) return;
    const wait = now ? 0 : Math.max(0, 2000 - (Date.now() - state.sideRefresh));
    if (sideTimer !== null) {
      if (!now) return;
      clearTimeout(sideTimer);
    }
    sideTimer = setTimeout(async () => {
      sideTimer = null;
      state.sideRefresh = Date.now();
      await Promise.all([loadSaves(), loadAudit(), loadConflicts(), loadOutbox()]);
      if (state.keysPrefix !== null && now) await loadKeys();
    }, wait);
  }

  // -- start ---------------------------------------------------------------------

  function start() {
    $("login").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("save-form").addEventListener("submit", createSave);
    $("keys-form").addEventListener("submit", loadKeys);
    $("undo").addEventListener("click", () => undoRedo("undo"));
    $("redo").addEventListener("click", () => undoRedo("redo"));
    setLive("connecting", "warn");
    renderStacks();
    identify().then(() => {
      renderStacks();
      refreshSide(true);
    });
    poll();
    setInterval(refreshTimes, 5000);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refreshSide(true);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
