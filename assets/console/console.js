// The commguard console: a single page over the admin API (docs/admin-api.md), nothing else. The token
// lives in this tab's sessionStorage only and goes out as a bearer header; every view is a
// hash route (#/activity, #/audit?subject=…) so it can be bookmarked. No inline script or style:
// the page's CSP forbids both, so the DOM is built here and bars are <meter> elements.
"use strict";
(function () {
  const TOKEN_KEY = "commguard.console.token";
  const VIEWS = ["activity", "audit", "consent", "agents", "alerts", "verify"];
  const FEED_KEEP = 200;
  const FEED_POLL_MS = 2000;
  const CONTACT_EVENTS = ["ConsentGranted", "ConsentRevoked", "StopReceived", "StartReceived", "DncAdded", "DncRemoved"];

  const $ = (id) => document.getElementById(id);
  let me = null; // the /me reply of the signed-in token
  let generation = 0; // bumps on each route change and sign-out: stale async work stops drawing
  let names = null; // agentId -> displayName of the agents this token sees, read once per sign-in

  // ------------------------------------------------------------------ DOM helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (value === true) node.setAttribute(key, "");
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function table(headers, rows, caption) {
    return el(
      "div",
      { class: "table-wrap" },
      el(
        "table",
        {},
        caption ? el("caption", { text: caption }) : null,
        el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, rows)
      )
    );
  }

  async function loadNames() {
    if (names) return names;
    try {
      const agents = await allPages("/admin/api/agents?limit=500", "agents", 4);
      names = Object.fromEntries(agents.map((a) => [a.agentId, a.displayName || a.agentId]));
    } catch (_) {
      names = {};
    }
    return names;
  }

  // An agent by its name, its id in full on hover and for screen readers.
  function agentCell(id) {
    if (!id) return el("td", { text: "" });
    const name = names && names[id];
    return el("td", { title: id }, name ? el("span", { class: "nowrap", text: name }) : null, el("span", { class: name ? "mono muted small block nowrap" : "mono", text: name ? id.slice(0, 8) + "…" : id }));
  }

  function actorText(actor) {
    if (!actor) return "";
    if (actor.kind === "agent" && names && names[actor.id]) return "agent " + names[actor.id];
    if (actor.kind === "org" && me && me.org && me.orgId === actor.id) return "org " + me.org.name;
    return actor.kind + " " + actor.id;
  }

  function short(hash) {
    return hash ? hash.slice(0, 12) + "…" : "";
  }

  function when(text) {
    return text ? text.replace("T", " ").replace(/\.\d+Z$/, "Z") : "";
  }

  function money(n) {
    return n === null || n === undefined ? "—" : "$" + Number(n).toFixed(4).replace(/0{1,2}$/, "");
  }

  function errorBox(error) {
    return el("p", { class: "error", role: "alert", text: describe(error) });
  }

  function describe(error) {
    if (error && error.status) {
      const code = error.body && error.body.code ? " (" + error.body.code + ")" : "";
      const retry = error.body && error.body.retryAfter ? " Retry in " + error.body.retryAfter + " s." : "";
      return "HTTP " + error.status + ": " + ((error.body && error.body.error) || error.message) + code + retry;
    }
    return String((error && error.message) || error);
  }

  // ------------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error) || "HTTP " + status);
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, token) {
    const response = await fetch(path, {
      headers: { Authorization: "Bearer " + (token || sessionStorage.getItem(TOKEN_KEY) || ""), Accept: "application/json" },
      credentials: "omit",
      cache: "no-store",
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
    const text = q.toString();
    return text ? "?" + text : "";
  }

  // Every page of a cursor-paged list, up to `max` pages.
  async function allPages(path, field, max) {
    const items = [];
    let cursor = null;
    for (let i = 0; i < (max || 20); i++) {
      const sep = path.includes("?") ? "&" : "?";
      const page = await api(path + (cursor ? sep + "cursor=" + encodeURIComponent(cursor) : ""));
      items.push(...(page[field] || []));
      cursor = page.nextCursor;
      if (!cursor) break;
    }
    return items;
  }

  // ------------------------------------------------------------------ sign-in and routing

  async function signIn(token) {
    const error = $("signin-error");
    error.textContent = "";
    try {
      const who = await api("/admin/api/me", token);
      sessionStorage.setItem(TOKEN_KEY, token);
      me = who;
      $("token").value = "";
      route();
    } catch (e) {
      // The API's own refusal, as it said it (a wrong token counts toward the lockout there).
      error.textContent = describe(e);
    }
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    me = null;
    names = null;
    generation++;
    $("view").replaceChildren();
    route();
  }

  function parseHash() {
    const hash = location.hash.replace(/^#\/?/, "");
    const [name, search] = hash.split("?");
    return { name: VIEWS.includes(name) ? name : "activity", params: new URLSearchParams(search || "") };
  }

  function go(name, params) {
    const text = query(params || {});
    const target = "#/" + name + text;
    if (location.hash === target) route();
    else location.hash = target;
  }

  async function route() {
    generation++;
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token && !me) {
      try {
        me = await api("/admin/api/me", token);
      } catch (e) {
        sessionStorage.removeItem(TOKEN_KEY);
        $("signin-error").textContent = describe(e);
      }
    }
    const signedIn = Boolean(me);
    $("signin").hidden = signedIn;
    $("nav").hidden = !signedIn;
    $("signout").hidden = !signedIn;
    $("who").textContent = signedIn
      ? me.role === "super-admin"
        ? "Master token: every organization"
        : "Org token: " + ((me.org && me.org.name) || me.orgId) + " (" + me.orgId + ")"
      : "";
    if (!signedIn) {
      $("view").replaceChildren();
      $("token").focus();
      return;
    }
    const { name, params } = parseHash();
    for (const link of document.querySelectorAll("#nav a")) {
      if (link.dataset.view === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    const view = $("view");
    const mine = generation;
    const heading = el("h1", { tabindex: "-1", text: TITLES[name] });
    const body = el("div", { class: "view-body" });
    view.replaceChildren(heading, body);
    document.title = TITLES[name] + " · commguard console";
    heading.focus({ preventScroll: true });
    try {
      await loadNames();
      await RENDER[name](body, params, () => mine === generation);
    } catch (e) {
      if (mine === generation) body.append(errorBox(e));
    }
  }

  const TITLES = {
    activity: "Activity",
    audit: "Audit search",
    consent: "Consent as of",
    agents: "Agents and limits",
    alerts: "Alerts",
    verify: "Verify the hash chains",
  };

  // ------------------------------------------------------------------ Activity

  function outcomeOf(envelope) {
    const p = envelope.provenance;
    if (p && p.refusedBy) return "refused";
    if (/Blocked$|Refused$|Failed$|Rejected$/.test(envelope.eventType)) return "refused";
    return "allowed";
  }

  function payloadView(payload) {
    const text = JSON.stringify(payload, null, 2) || "";
    const pre = el("pre", { class: "payload" });
    // "[erased]" stands out: the field's key was destroyed (erasure or retention).
    const parts = text.split('"[erased]"');
    parts.forEach((part, i) => {
      pre.append(part);
      if (i < parts.length - 1) pre.append(el("mark", { class: "erased", text: "[erased]" }));
    });
    return pre;
  }

  function provenanceView(p) {
    if (!p || !Array.isArray(p.checks) || p.checks.length === 0) {
      return el("p", { class: "muted", text: "No decision provenance (not caused by a checked command)." });
    }
    const rows = p.checks.map((c) =>
      el(
        "tr",
        { class: c.check === p.refusedBy ? "refusing" : "" },
        el("td", { text: c.check }),
        el("td", {}, el("span", { class: "badge " + c.result, text: c.result })),
        el("td", { text: c.detail || "" })
      )
    );
    return el(
      "div",
      {},
      p.refusedBy ? el("p", { class: "refused-by" }, "Refused by ", el("strong", { text: p.refusedBy })) : null,
      table(["Check", "Result", "Detail"], rows, "Decision provenance")
    );
  }

  function eventItem(envelope) {
    const outcome = outcomeOf(envelope);
    const actor = actorText(envelope.actor);
    const summary = el(
      "summary",
      {},
      el("span", { class: "badge " + outcome, text: outcome }),
      el("span", { class: "etype", text: envelope.eventType }),
      el("span", { class: "muted", text: envelope.aggregateType + "/" + envelope.aggregateId + " #" + envelope.sequence }),
      el("span", { class: "muted right", text: when(envelope.occurredAt) })
    );
    const redactions = (envelope.redactions || []).map((r) => r.path + " (" + r.reason + ")").join(", ");
    const facts = el(
      "dl",
      { class: "facts" },
      el("dt", { text: "Position" }), el("dd", { text: envelope.position }),
      el("dt", { text: "Actor" }), el("dd", { text: actor }),
      el("dt", { text: "Organization" }), el("dd", { text: envelope.orgId || "—" }),
      el("dt", { text: "Transport" }), el("dd", { text: envelope.transport || "—" }),
      el("dt", { text: "Request" }), el("dd", { text: envelope.requestId || "—" }),
      el("dt", { text: "Hash" }), el("dd", { class: "mono", text: short(envelope.hash) }),
      redactions ? el("dt", { text: "Redactions" }) : null,
      redactions ? el("dd", { text: redactions }) : null
    );
    // Wide screens: the event's facts and payload beside its decision provenance.
    const body = el(
      "div",
      { class: "event-body" },
      el("div", {}, facts, payloadView(envelope.payload)),
      el("div", {}, provenanceView(envelope.provenance))
    );
    return el("li", {}, el("details", { class: "event" }, summary, body));
  }

  // The feed reads forward only (`after`), so the newest events are found by bisecting the
  // position range for a start whose page reaches the head holding FEED_KEEP to 1000 events: a
  // few dozen small reads at most, instead of walking the whole store from position 0.
  async function newestPage(live) {
    const read = (after) => api("/admin/api/events" + query({ after, limit: 1000 }));
    const first = await read(0);
    if (first.events.length < 1000 || !live()) return live() ? first : null;
    let lo = 0; // more than 1000 events after lo
    let hi = first.headPosition; // fewer than FEED_KEEP events after hi
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      const page = await read(mid);
      if (!live()) return null;
      if (page.events.length >= 1000) lo = mid;
      else if (page.events.length < FEED_KEEP) hi = mid;
      else return page;
    }
    return read(hi);
  }

  async function renderActivity(body, params, live) {
    const status = el("p", { class: "status", role: "status", text: "Reading the feed…" });
    // The "new events" bar always takes its place, so nothing jumps when events arrive.
    const pending = [];
    const newer = el("button", { type: "button", class: "newer", disabled: true, text: "No newer events" });
    const list = el("ol", { class: "feed", reversed: true });
    body.append(status, newer, list);
    let shown = [];
    let after = Number(params.get("after") || 0);
    let head = null;

    function draw(events) {
      for (const e of events) list.prepend(eventItem(e));
      while (list.children.length > FEED_KEEP) list.lastElementChild.remove();
    }
    function flush() {
      draw(pending.splice(0));
      newer.disabled = true;
      newer.textContent = "No newer events";
    }
    newer.addEventListener("click", () => {
      flush();
      window.scrollTo(0, 0);
    });

    // Start near the head (or at a bookmarked `after`), keep the newest FEED_KEEP, then follow.
    if (params.get("after")) {
      for (;;) {
        const page = await api("/admin/api/events" + query({ after, limit: 1000 }));
        if (!live()) return;
        shown = shown.concat(page.events).slice(-FEED_KEEP);
        after = page.nextAfter;
        head = page.headPosition;
        status.textContent = "Reading the feed… position " + after;
        if (page.events.length < 1000) break;
      }
    } else {
      const page = await newestPage(live);
      if (!page) return;
      shown = page.events.slice(-FEED_KEEP);
      after = page.nextAfter;
      head = page.headPosition;
    }
    draw(shown);
    const describeHead = () =>
      "Newest first. Following the feed: head position " + (head === null ? "—" : head) + ", updated every 2 s.";
    status.textContent = describeHead();
    if (shown.length === 0) list.before(el("p", { class: "muted", text: "No events yet." }));

    const poll = async () => {
      if (!live()) return;
      try {
        const page = await api("/admin/api/events" + query({ after, limit: 1000 }));
        if (!live()) return;
        after = page.nextAfter;
        head = page.headPosition;
        if (page.events.length) {
          if (window.scrollY < 40 && pending.length === 0) draw(page.events);
          else {
            pending.push(...page.events);
            newer.disabled = false;
            newer.textContent = "Show " + pending.length + " newer event" + (pending.length === 1 ? "" : "s");
          }
        }
        status.textContent = describeHead();
      } catch (e) {
        status.textContent = "Feed paused: " + describe(e);
      }
      setTimeout(poll, FEED_POLL_MS);
    };
    setTimeout(poll, FEED_POLL_MS);
  }

  // ------------------------------------------------------------------ Audit search

  function field(label, input, hint) {
    const id = input.id;
    return el("div", { class: "field" }, el("label", { for: id }, label, hint ? el("span", { class: "hint", text: " " + hint }) : null), input);
  }

  function select(id, options, value) {
    return el(
      "select",
      { id, name: id },
      options.map(([v, label]) => el("option", { value: v, selected: v === value, text: label }))
    );
  }

  function text(id, value, placeholder) {
    return el("input", { id, name: id, type: "text", value: value || "", placeholder: placeholder || "", spellcheck: "false" });
  }

  function formValues(form) {
    const out = {};
    for (const [k, v] of new FormData(form).entries()) if (String(v).trim() !== "") out[k] = String(v).trim();
    return out;
  }

  async function agentOptions() {
    const known = await loadNames();
    return Object.entries(known).map(([id, name]) => [id, name + " (" + id.slice(0, 8) + "…)"]);
  }

  async function renderAudit(body, params, live) {
    const p = Object.fromEntries(params.entries());
    const agents = await agentOptions();
    if (!live()) return;
    const form = el(
      "form",
      { class: "filters", id: "audit-form" },
      field("Phone number or email", text("subject", p.subject, "e.g. +12025550123")),
      field("Agent", select("agentId", [["", "any"], ...agents], p.agentId || "")),
      field("Event type", text("eventType", p.eventType, "e.g. MessageBlocked")),
      field("Outcome", select("outcome", [["", "any"], ["allowed", "allowed"], ["refused", "refused"]], p.outcome || "")),
      field(
        "Actor",
        select("actorKind", [["", "any"], ...["agent", "org", "super-admin", "system", "provider", "cli"].map((k) => [k, k])], p.actorKind || "")
      ),
      field("From (RFC 3339)", text("from", p.from, "e.g. 2026-12-01T00:00:00Z")),
      field("To (RFC 3339)", text("to", p.to, "e.g. 2026-12-31T23:59:59Z")),
      el("div", { class: "actions" }, el("button", { type: "submit", text: "Search" }))
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      go("audit", formValues(form));
    });
    body.append(form, el("p", { class: "muted small", text: "A phone number or email is matched on the server by its blind index (docs/privacy.md): the audit view holds no address in the clear." }));
    if (!["subject", "agentId", "eventType", "outcome", "actorKind", "from", "to", "cursor"].some((k) => p[k])) {
      body.append(el("p", { class: "muted", text: "Choose filters and search. Results are in commit order, 50 a page." }));
      return;
    }
    const page = await api("/admin/api/audit" + query(p));
    if (!live()) return;
    const rows = page.items.map((item) =>
      el(
        "tr",
        { class: item.outcome === "refused" ? "refusing" : "" },
        el("td", { class: "nowrap", text: when(item.occurredAt) }),
        el("td", { text: item.eventType }),
        el("td", {}, el("span", { class: "badge " + item.outcome, text: item.outcome })),
        el("td", { class: "nowrap", text: actorText(item.actor) }),
        agentCell(item.agentId),
        el("td", { class: "refused-by", text: item.refusedBy || "" }),
        el("td", { text: [item.code, item.rule ? "rule " + item.rule : null].filter(Boolean).join(", ") }),
        el("td", { text: item.summary })
      )
    );
    body.append(
      el("p", { class: "status", role: "status", text: page.items.length + " result" + (page.items.length === 1 ? "" : "s") + (p.cursor ? " (a later page)" : "") }),
      table(["When", "Event", "Outcome", "Actor", "Agent", "Refused by", "Code / rule", "Summary"], rows, "Audit results")
    );
    const nav = el("div", { class: "actions" });
    if (p.cursor) nav.append(el("button", { type: "button", class: "secondary", text: "First page", onclick: () => go("audit", Object.assign({}, p, { cursor: "" })) }));
    if (page.nextCursor) nav.append(el("button", { type: "button", text: "Next page", onclick: () => go("audit", Object.assign({}, p, { cursor: page.nextCursor })) }));
    body.append(nav);
  }

  // ------------------------------------------------------------------ Consent as of

  async function renderConsent(body, params, live) {
    const p = Object.fromEntries(params.entries());
    const form = el(
      "form",
      { class: "filters", id: "consent-form" },
      field("Contact (phone or email)", text("contact", p.contact, "e.g. +12025550123")),
      field("As of (RFC 3339)", text("as_of", p.as_of, "empty: now")),
      el("div", { class: "actions" }, el("button", { type: "submit", text: "Look up" }))
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      go("consent", formValues(form));
    });
    body.append(form);
    if (!p.contact) return;
    const view = await api("/admin/api/consent" + query({ contact: p.contact, as_of: p.as_of, limit: 500 }));
    if (!live()) return;
    const rows = view.records.map((r) =>
      el(
        "tr",
        {},
        agentCell(r.agentId),
        el("td", { text: r.channel }),
        el("td", {}, el("span", { class: "badge " + (r.status === "granted" ? "allowed" : "refused"), text: r.status })),
        el("td", { text: r.consentType || "" }),
        el("td", { class: "nowrap", text: when(r.grantedAt) }),
        el("td", { class: "nowrap", text: when(r.revokedAt) || "—" }),
        el("td", { text: r.source || "" })
      )
    );
    body.append(
      el(
        "p",
        { class: "status", role: "status", id: "consent-state" },
        "As of ", el("strong", { text: when(view.asOf) }), ": ",
        view.onDnc ? el("span", { class: "badge refused", text: "on the do-not-contact list" }) : el("span", { class: "badge allowed", text: "not on the do-not-contact list" }),
        ", " + view.records.length + " consent record" + (view.records.length === 1 ? "" : "s") + "."
      ),
      view.records.length
        ? table(["Agent", "Channel", "Status", "Type", "Granted", "Revoked", "Source"], rows, "Consent records")
        : el("p", { class: "muted", text: "No consent record at that instant." })
    );
    // The events that produced this state: the contact's consent and DNC events up to the instant.
    const items = [];
    let cursor = null;
    for (let i = 0; i < 10; i++) {
      const page = await api("/admin/api/audit" + query({ subject: p.contact, to: view.asOf, limit: 500, cursor }));
      items.push(...page.items.filter((it) => CONTACT_EVENTS.includes(it.eventType)));
      cursor = page.nextCursor;
      if (!cursor) break;
    }
    if (!live()) return;
    body.append(
      el("h2", { text: "Events that produced it" }),
      items.length
        ? table(
            ["When", "Event", "Actor", "Agent", "Summary"],
            items.map((it) =>
              el(
                "tr",
                {},
                el("td", { class: "nowrap", text: when(it.occurredAt) }),
                el("td", { text: it.eventType }),
                el("td", { class: "nowrap", text: actorText(it.actor) }),
                agentCell(it.agentId),
                el("td", { text: it.summary })
              )
            ),
            "Consent and DNC events up to the instant"
          )
        : el("p", { class: "muted", text: "No consent or DNC event for this contact up to that instant." })
    );
  }

  // ------------------------------------------------------------------ Agents and limits

  function bar(label, used, max, format) {
    const f = format || String;
    if (max === null || max === undefined) return el("div", { class: "bar" }, el("span", { text: label + ": " + f(used) + " (no cap)" }));
    const id = "m" + Math.random().toString(36).slice(2);
    return el(
      "div",
      { class: "bar" },
      el("label", { for: id, text: label + ": " + f(used) + " of " + f(max) }),
      el("meter", { id, min: 0, max: max || 1, low: (max || 1) * 0.8, high: (max || 1) * 0.95, optimum: 0, value: Math.min(used, max || 1) })
    );
  }

  async function renderAgents(body, params, live) {
    const [agents, today, month, orgs] = await Promise.all([
      allPages("/admin/api/agents?limit=500", "agents", 10),
      api("/admin/api/usage?period=today"),
      api("/admin/api/usage?period=month"),
      allPages("/admin/api/orgs?limit=500", "orgs", 4),
    ]);
    if (!live()) return;
    const usage = (u) => Object.fromEntries((u.agents || []).map((a) => [a.agentId, a]));
    const todayBy = usage(today);
    const monthBy = usage(month);
    const orgSpend = (u, orgId) => (u.agents || []).filter((a) => a.orgId === orgId).reduce((sum, a) => sum + (a.totalCost || 0), 0);
    // One row per organization: its spend against its caps (the agents' spend summed).
    const spendCell = (spent, cap) =>
      el("td", {}, cap === null || cap === undefined ? money(spent) + " (no cap)" : el("div", { class: "bar" }, el("span", { text: money(spent) + " of " + money(cap) }), el("meter", { min: 0, max: cap || 1, low: (cap || 1) * 0.8, high: (cap || 1) * 0.95, optimum: 0, value: Math.min(spent, cap || 1), "aria-label": "spend " + money(spent) + " of " + money(cap) })));
    const orgRows = orgs.map((o) =>
      el(
        "tr",
        { "data-org": o.id },
        el("td", { title: o.id }, el("span", { text: o.name }), el("span", { class: "mono muted small block nowrap", text: o.id.slice(0, 8) + "…" })),
        el("td", {}, el("span", { class: "badge skipped", text: o.mode })),
        el("td", { class: "num", text: o.pool ? o.pool.activeAgents + " of " + o.pool.maxAgents : o.agentCount }),
        spendCell(orgSpend(today, o.id), o.maxSpendPerDay),
        spendCell(orgSpend(month, o.id), o.maxSpendPerMonth)
      )
    );
    const orgTable = table(["Organization", "Mode", "Agents", "Spend today", "Spend this month"], orgRows, me.role === "super-admin" ? "Organizations: spend against their caps" : "Organization: spend against its caps");
    body.append(
      el("p", { class: "status", role: "status", text: agents.length + " agent" + (agents.length === 1 ? "" : "s") + (me.role === "super-admin" ? " in every organization" : " in " + me.orgId) + ". Usage: today and this month (UTC)." })
    );
    const cards = el("div", { class: "cards" });
    for (const a of agents) {
      const t = todayBy[a.agentId] || { totalActions: 0, totalCost: 0 };
      const m = monthBy[a.agentId] || { totalActions: 0, totalCost: 0 };
      const lim = a.limits || {};
      const over = a.overrides || {};
      const overridden = Object.entries(over).filter(([, v]) => v !== null);
      const channels = a.channels ? Object.entries(a.channels).filter(([, v]) => v).map(([k, v]) => k + " " + v).join(", ") : "";
      cards.append(
        el(
          "article",
          { class: "card agent", "data-agent": a.agentId },
          el("h2", {}, a.displayName || a.agentId, " ", el("span", { class: "badge " + (a.status === "active" ? "allowed" : "refused"), text: a.status })),
          el(
            "dl",
            { class: "facts" },
            el("dt", { text: "Agent" }), el("dd", { class: "mono", text: a.agentId }),
            el("dt", { text: "Organization" }), el("dd", { class: "mono", text: a.orgId }),
            el("dt", { text: "Tier" }), el("dd", { text: a.tier || "" }),
            el("dt", { text: "Channels" }), el("dd", { text: channels || "—" }),
            el("dt", { text: "Blocked" }), el("dd", { text: (a.blockedChannels || []).join(", ") || "none" }),
            el("dt", { text: "Overrides" }), el("dd", { text: overridden.length ? overridden.map(([k, v]) => k + " " + v).join(", ") : "none (tier limits)" })
          ),
          el(
            "div",
            { class: "bars" },
            bar("Actions today", t.totalActions || 0, lim.maxActionsPerDay),
            bar("Spend today", t.totalCost || 0, lim.maxSpendPerDay, money),
            bar("Spend this month", m.totalCost || 0, lim.maxSpendPerMonth, money)
          ),
          el(
            "p",
            { class: "muted small" },
            "Limits in force: " + lim.maxActionsPerMinute + "/min, " + lim.maxActionsPerHour + "/h, " + lim.maxActionsPerDay + "/day; spend " + money(lim.maxSpendPerDay) + "/day, " + money(lim.maxSpendPerMonth) + "/month."
          ),
          el("p", {}, el("a", { href: "#/audit?agentId=" + encodeURIComponent(a.agentId), text: "Audit this agent" }))
        )
      );
    }
    body.append(
      orgTable,
      el("h2", { text: "Agents: usage against their limits" }),
      agents.length ? cards : el("p", { class: "muted", text: "No agent." })
    );
  }

  // ------------------------------------------------------------------ Alerts

  async function renderAlerts(body, params, live) {
    const alerts = await allPages("/admin/api/alerts?limit=500", "alerts", 10);
    if (!live()) return;
    if (!alerts.length) {
      body.append(el("p", { class: "muted", role: "status", text: "No open alert." }));
      return;
    }
    const order = ["HIGH", "MEDIUM", "LOW"];
    const groups = {};
    for (const a of alerts) (groups[a.severity + " · " + a.rule] = groups[a.severity + " · " + a.rule] || []).push(a);
    const keys = Object.keys(groups).sort((x, y) => order.indexOf(x.split(" · ")[0]) - order.indexOf(y.split(" · ")[0]) || x.localeCompare(y));
    body.append(el("p", { class: "status", role: "status", text: alerts.length + " alert" + (alerts.length === 1 ? "" : "s") + ", by severity and rule." }));
    for (const key of keys) {
      const list = groups[key];
      body.append(
        el("h2", {}, el("span", { class: "badge sev-" + list[0].severity.toLowerCase(), text: list[0].severity }), " " + list[0].rule + " (" + list.length + ")"),
        table(
          ["Raised", "Title", "Subject", "Organization", "Occurrences", "Message"],
          list.map((a) =>
            el(
              "tr",
              {},
              el("td", { class: "nowrap", text: when(a.raisedAt) }),
              el("td", { text: a.title }),
              el("td", { class: "mono", title: a.subjectId, text: a.subjectKind + " " + ((a.subjectKind === "agent" && names && names[a.subjectId]) || a.subjectId) }),
              el("td", { class: "mono", text: a.orgId || "platform" }),
              el("td", { class: "num", text: a.occurrences }),
              el("td", { text: a.message })
            )
          )
        )
      );
    }
  }

  // ------------------------------------------------------------------ Verify

  async function recompute(kind, id, out) {
    const J = window.CommguardJcs;
    J.selfTest();
    if (!window.crypto || !crypto.subtle) throw new Error("This browser offers no Web Crypto here (a secure context is needed)");
    let after = 0;
    let previous = J.GENESIS;
    let expected = 1;
    let count = 0;
    let head = null;
    for (;;) {
      const page = await api("/admin/api/chains/" + encodeURIComponent(kind) + "/" + encodeURIComponent(id) + "/events" + query({ after, limit: 500 }));
      head = page.head;
      for (const e of page.events) {
        const broken = (reason) => ({ ok: false, sequence: e.sequence, reason, count });
        if (e.sequence !== expected) return { ok: false, sequence: expected, reason: "sequence " + expected + " is missing (found " + e.sequence + ")", count };
        if (e.prevHash !== previous) return broken("prevHash does not link to the previous event's hash");
        const computed = await J.eventHash(e);
        if (computed !== e.hash) return broken("stored hash " + short(e.hash) + " but the event hashes to " + short(computed));
        previous = e.hash;
        expected++;
        count++;
      }
      out.textContent = "Recomputing… " + count + " events";
      if (page.events.length === 0 || page.nextAfter === after) break;
      after = page.nextAfter;
    }
    if (!head || head.lastSequence !== count) return { ok: false, sequence: count + 1, reason: "the chain head says " + (head ? head.lastSequence : "?") + " events, the store holds " + count, count };
    if (head.lastHash !== previous) return { ok: false, sequence: count, reason: "the chain head's hash is not the last event's", count };
    return { ok: true, count };
  }

  async function renderVerify(body, params, live) {
    if (me.role !== "super-admin") {
      body.append(
        el(
          "p",
          { class: "notice", role: "status" },
          "Verify is offered to the master token only: recomputing a hash needs the payloads as stored (sealed), which the admin API gives to the master token alone (raw=true). Sign in with the master token to verify."
        )
      );
      return;
    }
    const kind = params.get("type") || "";
    const chosen = params.get("aggregate") || "";
    const heads = await allPages("/admin/api/chains" + query({ aggregateType: kind, limit: 500 }), "chains", 4);
    if (!live()) return;
    const types = Array.from(new Set(heads.map((h) => h.aggregateType).concat(kind ? [kind] : []))).sort();
    const filter = el(
      "form",
      { class: "filters" },
      field("Aggregate type", select("type", [["", "all"], ...types.map((t) => [t, t])], kind)),
      el("div", { class: "actions" }, el("button", { type: "submit", class: "secondary", text: "Show" }))
    );
    filter.addEventListener("submit", (ev) => {
      ev.preventDefault();
      go("verify", formValues(filter));
    });
    const options = heads.map((h) => [h.aggregateType + "/" + h.aggregateId, h.aggregateType + "/" + h.aggregateId + " (" + h.lastSequence + ")"]);
    // A bookmarked aggregate beyond the heads listed here is still offered.
    if (chosen && !options.some(([v]) => v === chosen)) options.unshift([chosen, chosen]);
    const choice = select("aggregate", options, chosen || (options[0] && options[0][0]));
    const result = el("p", { id: "verify-result", class: "status", role: "status", "aria-live": "polite", text: "Choose an aggregate and recompute its chain in this browser." });
    const button = el("button", { type: "submit", id: "recompute", text: "Recompute chain" });
    const run = el("form", { class: "filters", id: "verify-form" }, el("div", { class: "field wide" }, el("label", { for: "aggregate", text: "Aggregate" }), choice), el("div", { class: "actions" }, button));
    run.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const value = choice.value;
      const slash = value.indexOf("/");
      const [t, id] = [value.slice(0, slash), value.slice(slash + 1)];
      history.replaceState(null, "", "#/verify" + query({ type: kind, aggregate: value }));
      button.disabled = true;
      result.className = "status";
      result.textContent = "Recomputing…";
      try {
        const r = await recompute(t, id, result);
        result.className = "status " + (r.ok ? "ok" : "broken");
        result.textContent = r.ok
          ? "OK: " + value + ", " + r.count + " events recomputed (SHA-256 over RFC 8785 JCS, docs/events.md#hash-chain), every link and the chain head match."
          : "BROKEN: " + value + " at sequence " + r.sequence + ": " + r.reason;
      } catch (e) {
        result.className = "status broken";
        result.textContent = "Could not verify: " + describe(e);
      } finally {
        button.disabled = false;
      }
    });
    body.append(
      filter,
      run,
      result,
      table(
        ["Aggregate type", "Aggregate", "Last sequence", "Last hash"],
        heads.map((h) =>
          el(
            "tr",
            {},
            el("td", { text: h.aggregateType }),
            el("td", { class: "mono" }, el("a", { href: "#/verify" + query({ type: kind, aggregate: h.aggregateType + "/" + h.aggregateId }), text: h.aggregateId })), el("td", { class: "num", text: h.lastSequence }), el("td", { class: "mono", title: h.lastHash, text: short(h.lastHash) }))
        ),
        "Chain heads"
      )
    );
  }

  const RENDER = {
    activity: renderActivity,
    audit: renderAudit,
    consent: renderConsent,
    agents: renderAgents,
    alerts: renderAlerts,
    verify: renderVerify,
  };

  // ------------------------------------------------------------------ start

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      signIn($("token").value.trim());
    });
    $("signout").addEventListener("click", signOut);
    window.addEventListener("hashchange", route);
    route();
  });
})();
