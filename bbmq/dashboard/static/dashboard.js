// The bbmq dashboard: one page, views by URL fragment, fed by /api/ and its event stream.
// Everything from the broker is put in the page as text (textContent), never as markup.
"use strict";

const HISTORY_MS = 5 * 60 * 1000;  // what the charts keep: the last five minutes
const SERIES = [
  { key: "published", label: "Publish", color: "#2563eb" },
  { key: "delivered", label: "Deliver", color: "#0d9488" },
  { key: "acked", label: "Ack", color: "#16a34a" },
  { key: "redelivered", label: "Redeliver", color: "#ea580c" },
];
const state = { session: null, live: null, history: [], events: null,
                sort: { key: "name", dir: 1 }, filter: "", view: null };

// ------------------------------------------------------------------ session and live data

async function boot() {
  const result = await api("/api/session");
  if (!result.ok) {
    showNotice(refusalText(result));
    document.getElementById("main").replaceChildren();
    return;
  }
  state.session = result.body;
  document.getElementById("mode").classList.toggle("hidden", !state.session.read_only);
  document.getElementById("logout").classList.toggle(
    "hidden", !(state.session.auth_required && state.session.logged_in));
  if (state.session.auth_required && !state.session.logged_in) { renderLogin(); return; }
  const overview = await api("/api/overview");
  if (!overview.ok) return;
  state.history = overview.body.history || [];
  connectEvents();
  route();
}

function loggedOut(reason) {
  if (state.events) { state.events.close(); state.events = null; }
  if (state.session) { state.session.logged_in = false; state.session.csrf = null; }
  document.getElementById("live").className = "live";
  document.getElementById("live").textContent = "offline";
  document.getElementById("logout").classList.add("hidden");
  renderLogin(reason);
}

function connectEvents() {
  if (state.events) state.events.close();
  const live = document.getElementById("live");
  const source = new EventSource("/api/events");
  state.events = source;
  source.onopen = () => { live.className = "live on"; live.textContent = "live"; };
  source.onerror = () => { live.className = "live"; live.textContent = "reconnecting…"; };
  source.addEventListener("logged_out", () => loggedOut("your session ended: log in again"));
  source.onmessage = (event) => {
    state.live = JSON.parse(event.data);
    const point = state.live.overview.rates;
    const last = state.history[state.history.length - 1];
    if (point && (!last || point.t > last.t)) state.history.push(point);
    const oldest = Date.now() - HISTORY_MS;
    while (state.history.length && state.history[0].t < oldest) state.history.shift();
    refresh();
  };
}

// ------------------------------------------------------------------ routing

function route() {
  const hash = decodeURIComponent(location.hash.replace(/^#/, "")) || "/";
  const main = document.getElementById("main");
  let view;
  if (hash.startsWith("/topic/")) view = { name: "topic", topic: hash.slice(7) };
  else if (hash === "/topics") view = { name: "topics" };
  else if (hash === "/connections") view = { name: "connections" };
  else view = { name: "overview" };
  state.view = view;
  for (const link of document.querySelectorAll("#nav a")) {
    const active = link.dataset.view === view.name || (view.name === "topic" && link.dataset.view === "topics");
    link.classList.toggle("active", active);
  }
  showNotice("");
  main.replaceChildren();
  if (state.session.auth_required && !state.session.logged_in) { renderLogin(); return; }
  ({ overview: buildOverview, topics: buildTopics, topic: buildTopic,
     connections: buildConnections })[view.name](main, view);
  refresh();
}

function refresh() {
  if (!state.live || !state.view) return;
  const render = { overview: refreshOverview, topics: refreshTopics, topic: refreshTopic,
                   connections: refreshConnections }[state.view.name];
  if (document.getElementById("view-" + state.view.name)) render(state.view);
}

// ------------------------------------------------------------------ login

function renderLogin(reason) {
  const main = document.getElementById("main");
  const live = document.getElementById("live");
  live.className = "live";
  live.textContent = "not logged in";
  const error = el("div", { class: "error", id: "login-error" }, reason || "");
  const token = el("input", { type: "password", id: "token", autocomplete: "current-password",
                              placeholder: "admin token", required: true });
  const form = el("form", { class: "panel login", id: "login-form", onsubmit: async (event) => {
    event.preventDefault();
    const result = await api("/api/login", { method: "POST", body: { token: token.value } });
    if (!result.ok) { error.textContent = refusalText(result); return; }
    state.session = result.body;
    document.getElementById("logout").classList.remove("hidden");
    boot();
  } },
  el("h1", {}, "Log in"),
  el("p", { class: "subtitle" }, "This broker requires a token with the ", el("code", {}, "admin"),
     " permission (one of its ", el("code", {}, "--auth-tokens"), ")."),
  error, token, el("button", { class: "primary", type: "submit" }, "Log in"));
  main.replaceChildren(form);
  token.focus();
}

// ------------------------------------------------------------------ overview

function card(label, valueId, detailId, small) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label),
            el("div", { class: small ? "value small" : "value", id: valueId }, "–"),
            detailId ? el("div", { class: "detail", id: detailId }) : null);
}

function buildOverview(main) {
  main.append(el("div", { id: "view-overview" },
    el("h1", {}, "Overview"),
    el("p", { class: "subtitle", id: "server-line" }, ""),
    el("div", { class: "cards" },
      card("Version", "ov-version"), card("Uptime", "ov-uptime", "ov-started"),
      card("Connections", "ov-connections"), card("Topics", "ov-topics"),
      card("Ready", "ov-ready"), card("In flight", "ov-inflight"),
      card("Dead letters", "ov-dead"), card("Bytes queued", "ov-memory")),
    el("div", { class: "cards wide" },
      el("div", { class: "card" },
         el("div", { class: "label" }, "Store"),
         el("div", { class: "value small", id: "ov-store" }, "–"),
         el("div", { class: "detail", id: "ov-store-state" })),
      el("div", { class: "card" },
         el("div", { class: "label" }, "Store commit latency"),
         el("div", { class: "value", id: "ov-commit" }, "–"),
         el("div", { class: "detail", id: "ov-commit-detail" }))),
    el("section", { class: "panel" },
      el("div", { class: "panel-head" }, el("h2", {}, "Messages per second, all topics"),
         el("span", { class: "right muted", id: "chart-span" })),
      el("div", { class: "charts" }, SERIES.map((s) => el("div", { class: "chart" },
        el("div", { class: "chart-head" },
          el("span", { class: "swatch", style: `background:${s.color}` }), s.label,
          el("span", { class: "num", id: `rate-${s.key}` }, "–"), el("span", { class: "muted" }, "/s")),
        el("div", { id: `chart-${s.key}` })))))));
}

function setText(id, text) {
  const node = document.getElementById(id);
  if (node) node.textContent = text;
}

function refreshOverview() {
  const ov = state.live.overview;
  const server = ov.server || {};
  setText("server-line", `pid ${server.pid} · listening on ${server.address} · log ${server.log}`);
  setText("ov-version", ov.version);
  setText("ov-uptime", duration(server.uptime_s || 0));
  const started = new Date(Date.now() - (server.uptime_s || 0) * 1000);
  setText("ov-started", "since " + (started.toDateString() === new Date().toDateString()
    ? started.toLocaleTimeString("en-GB") : started.toLocaleString("en-GB")));
  setText("ov-connections", number(server.connections));
  setText("ov-topics", number(ov.totals.topics));
  setText("ov-ready", number(ov.totals.ready));
  setText("ov-inflight", number(ov.totals.inflight));
  setText("ov-dead", number(ov.totals.dead_letters));
  setText("ov-memory", bytes(ov.queued_bytes));
  setText("ov-store", server.store);
  const storeState = document.getElementById("ov-store-state");
  storeState.replaceChildren(server.store_available
    ? el("span", { class: "badge good" }, "accepting writes")
    : el("span", { class: "badge bad" }, "unavailable: publishes are refused"));
  const commit = ov.commit;
  setText("ov-commit", commit.p50_ms === null ? "no commits yet" : `${commit.p50_ms} ms`);
  setText("ov-commit-detail", commit.p50_ms === null ? "" :
    `median of the last ${number(commit.sampled)} · p99 ${commit.p99_ms} ms · last ${commit.last_ms} ms · ${number(commit.commits)} commits`);
  const latest = state.history[state.history.length - 1] || {};
  const span = chartSpan(state.history);
  setText("chart-span", `last ${duration(span / 1000)} (the page keeps up to 5 min)`);
  for (const s of SERIES) {
    setText(`rate-${s.key}`, rate(latest[s.key] ?? 0));
    drawChart(document.getElementById(`chart-${s.key}`), state.history, s, span);
  }
}

// ------------------------------------------------------------------ topics

const TOPIC_COLUMNS = [
  { key: "name", label: "Topic", text: true },
  { key: "ready", label: "Ready" }, { key: "inflight", label: "In flight" },
  { key: "delayed", label: "Delayed" }, { key: "dead_letters", label: "Dead letters", alert: true },
  { key: "groups", label: "Groups" }, { key: "consumers", label: "Consumers" },
  { key: "publish_rate", label: "Publish/s", rate: "published" },
  { key: "deliver_rate", label: "Deliver/s", rate: "delivered" },
  { key: "ack_rate", label: "Ack/s", rate: "acked" },
];

function columnValue(row, column) {
  return column.rate ? (row.rates[column.rate] || 0) : row[column.key];
}

function buildTopics(main) {
  const filter = el("input", { class: "filter", id: "topic-filter", type: "search",
                               placeholder: "Filter topics…", value: state.filter,
                               oninput: (event) => { state.filter = event.target.value; refresh(); } });
  const head = el("tr", {}, TOPIC_COLUMNS.map((column) => el("th", {
    class: `sortable ${column.text ? "text" : ""}`, "data-key": column.key,
    onclick: () => {
      state.sort = { key: column.key, dir: state.sort.key === column.key ? -state.sort.dir : (column.text ? 1 : -1) };
      refresh();
    } }, column.label)));
  main.append(el("div", { id: "view-topics" },
    el("h1", {}, "Topics"),
    el("p", { class: "subtitle" }, "Queued messages summed over each topic's groups; rates over the last second. Click a column to sort."),
    el("section", { class: "panel" },
      el("div", { class: "panel-head" }, filter, el("span", { class: "right muted", id: "topic-count" })),
      el("table", { id: "topics-table" }, el("thead", {}, head), el("tbody", { id: "topics-body" })))));
}

function refreshTopics() {
  const rows = state.live.topics.filter((row) => row.name.toLowerCase().includes(state.filter.toLowerCase()));
  const column = TOPIC_COLUMNS.find((c) => c.key === state.sort.key) || TOPIC_COLUMNS[0];
  rows.sort((a, b) => {
    const va = columnValue(a, column), vb = columnValue(b, column);
    return (va < vb ? -1 : va > vb ? 1 : 0) * state.sort.dir;
  });
  for (const th of document.querySelectorAll("#topics-table th")) {
    th.classList.toggle("sorted", th.dataset.key === state.sort.key);
    th.classList.toggle("desc", th.dataset.key === state.sort.key && state.sort.dir < 0);
  }
  setText("topic-count", `${rows.length} of ${state.live.topics.length} topics`);
  const body = document.getElementById("topics-body");
  if (!rows.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: TOPIC_COLUMNS.length, class: "empty" },
      state.live.topics.length ? "No topic matches the filter." : "No topics yet: publish a message and it shows here.")));
    return;
  }
  body.replaceChildren(...rows.map((row) => el("tr", { "data-topic": row.name },
    TOPIC_COLUMNS.map((c) => {
      const value = columnValue(row, c);
      if (c.key === "name") return el("td", { "data-col": "name" }, el("a", { href: `#/topic/${encodeURIComponent(row.name)}` }, row.name));
      const cls = value === 0 ? "zero" : (c.alert ? "alert" : "");
      return el("td", { "data-col": c.key, class: cls }, c.rate ? rate(value) : number(value));
    }))));
}

// ------------------------------------------------------------------ one topic

function buildTopic(main, view) {
  const readOnly = state.session.read_only;
  const topic = view.topic;
  const groupSelect = el("select", { id: "peek-group" });
  const count = el("input", { type: "number", id: "peek-count", min: 1, max: 1000, value: 10 });
  const peekOut = el("div", { class: "messages", id: "peek-results" },
                     el("div", { class: "empty" }, "Peek shows the next messages a group would get, without consuming them."));
  const purgeResult = el("span", { class: "result", id: "purge-result" });
  const replayResult = el("span", { class: "result", id: "replay-result" });
  main.append(el("div", { id: "view-topic" },
    el("p", {}, el("a", { href: "#/topics" }, "← Topics")),
    el("h1", { id: "topic-name" }, topic),
    el("p", { class: "subtitle", id: "topic-line" }),
    readOnly ? el("div", { class: "notice info inline-notice" },
      "This dashboard is read-only (--dashboard-read-only): purge, group delete and replay are off.") : null,
    el("div", { id: "topic-body" },
    el("div", { class: "cards", id: "topic-cards" }),
    el("section", { class: "panel" },
      el("div", { class: "panel-head" }, el("h2", {}, "Consumer groups"),
        el("div", { class: "right" }, purgeResult,
          el("button", { class: "danger", id: "purge", disabled: readOnly,
                         title: readOnly ? "read-only dashboard" : "drop every queued (not in-flight) message of this topic",
                         onclick: () => purge(topic) }, "Purge topic…"))),
      el("table", {}, el("thead", {}, el("tr", {},
        ["Group", "Ready", "In flight", "Delayed", "Lag", "Delivered", "Acked"].map((h, i) => el("th", { class: i ? "" : "text" }, h)),
        el("th", { class: "text" }, "Consumers (address · name · in flight)"), el("th", {}, ""))),
        el("tbody", { id: "groups-body" }))),
    el("section", { class: "panel" },
      el("div", { class: "panel-head" }, el("h2", {}, "Peek at the next messages"),
        el("div", { class: "right inline" }, el("label", {}, "Group ", groupSelect),
          el("label", {}, "Count ", count),
          el("button", { class: "primary", id: "peek", onclick: () => peek(topic, groupSelect.value, count.value) }, "Peek"))),
      peekOut),
    el("section", { class: "panel", id: "dlq-panel" },
      el("div", { class: "panel-head" }, el("h2", {}, "Dead letters"),
        el("div", { class: "right" }, replayResult,
          el("button", { id: "replay", disabled: readOnly, onclick: () => replay(topic) }, "Replay dead letters…"))),
      el("p", { id: "dlq-line", class: "muted" })))));
}

function refreshTopic(view) {
  const row = state.live.topics.find((t) => t.name === view.topic);
  document.getElementById("topic-body").classList.toggle("hidden", !row);
  if (!row) {
    setText("topic-line", "This topic does not exist (yet): it appears when something publishes or subscribes to it.");
    return;
  }
  setText("topic-line", `${number(row.counters.published)} published · ${number(row.counters.acked)} acked · ${number(row.counters.redelivered)} redelivered · ${number(row.publishers)} publishers`);
  document.getElementById("topic-cards").replaceChildren(
    ...[["Ready", row.ready], ["In flight", row.inflight], ["Delayed", row.delayed],
        ["Dead letters", row.dead_letters], ["Publish/s", row.rates.published || 0, true],
        ["Deliver/s", row.rates.delivered || 0, true], ["Ack/s", row.rates.acked || 0, true]]
      .map(([label, value, isRate]) => el("div", { class: "card" }, el("div", { class: "label" }, label),
        el("div", { class: "value", "data-card": label }, isRate ? rate(value) : number(value)))));
  loadTopicDetail(view.topic);
}

let detailLoading = false;
async function loadTopicDetail(topic) {
  if (detailLoading) return;
  detailLoading = true;
  try {
    const result = await api(`/api/topics/${encodeURIComponent(topic)}`);
    if (!result.ok || !document.getElementById("view-topic")) return;
    const detail = result.body;
    const body = document.getElementById("groups-body");
    const select = document.getElementById("peek-group");
    const chosen = select.value;
    select.replaceChildren(...(detail.groups.length ? detail.groups.map((g) => el("option", { value: g.name }, g.name))
                                                   : [el("option", { value: "" }, "(backlog: no group yet)")]));
    if (chosen && detail.groups.some((g) => g.name === chosen)) select.value = chosen;
    const readOnly = state.session.read_only;
    body.replaceChildren(...(detail.groups.length ? detail.groups.map((g) => el("tr", { "data-group": g.name },
      el("td", {}, g.name), el("td", {}, number(g.ready)), el("td", {}, number(g.inflight)),
      el("td", {}, number(g.delayed)), el("td", { class: g.lag ? "" : "zero" }, number(g.lag)),
      el("td", {}, number(g.counters.delivered)), el("td", {}, number(g.counters.acked)),
      el("td", { class: "text" }, g.consumers.length ? g.consumers.map((c, i) => el("div", {},
        `${c.peer} · ${c.name || "(no name)"} · ${number(c.inflight)} in flight`)) : el("span", { class: "muted" }, "none")),
      el("td", {}, el("button", { class: "danger", disabled: readOnly, onclick: () => deleteGroup(topic, g.name) }, "Delete…"))))
      : [el("tr", {}, el("td", { colspan: 9, class: "empty" }, `No consumer group yet: ${number(detail.backlog)} messages wait in the backlog for the first one.`))]));
    const dlq = detail.dlq;
    setText("dlq-line", dlq ? `${number(dlq.queued)} messages in ${dlq.name} (groups: ${dlq.groups.join(", ") || "none yet"}). Replay re-publishes them to ${topic}, each to the group that gave up on it.`
                            : `No dead letters: ${topic}.dlq does not exist.`);
    const replayButton = document.getElementById("replay");
    replayButton.disabled = readOnly || !dlq || !dlq.queued;
  } finally {
    detailLoading = false;
  }
}

async function peek(topic, group, count) {
  const out = document.getElementById("peek-results");
  const params = new URLSearchParams({ n: count || 10 });
  if (group) params.set("group", group);
  const result = await api(`/api/topics/${encodeURIComponent(topic)}/peek?${params}`);
  if (!result.ok) { out.replaceChildren(el("div", { class: "empty" }, refusalText(result))); return; }
  if (!result.body.length) { out.replaceChildren(el("div", { class: "empty" }, "Nothing queued for this group.")); return; }
  out.replaceChildren(...result.body.map((m) => el("div", { class: "message", "data-id": m.id },
    el("div", { class: "meta" },
      el("span", {}, "id ", el("b", {}, m.id)), el("span", {}, "size ", el("b", {}, bytes(m.size))),
      el("span", {}, "attempts ", el("b", {}, m.attempts)),
      el("span", {}, "published ", el("b", {}, new Date(m.published_ms).toLocaleString("en-GB"))),
      m.sender ? el("span", {}, "from ", el("b", {}, m.sender)) : null,
      ...Object.entries(m.meta || {}).map(([k, v]) => el("span", {}, `${k} `, el("b", {}, v))),
      el("span", { class: "kind" }, m.encoding === "utf-8" ? "text" : "binary, hex")),
    el("pre", { class: "body" }, m.encoding === "utf-8" ? m.body : m.hex))));
}

async function act(resultId, question, path, body, done) {
  const out = document.getElementById(resultId);
  if (!window.confirm(question)) return;
  out.className = "result";
  out.textContent = "working…";
  const result = await api(path, { method: "POST", body: { ...body, confirm: true } });
  if (!result.ok) {
    out.className = "result error";
    out.textContent = refusalText(result);
    showNotice(refusalText(result));
    return;
  }
  out.textContent = done(result.body);
  refresh();
}

function purge(topic) {
  act("purge-result", `Purge every queued message of ${topic}? Messages in flight are kept. This cannot be undone.`,
      `/api/topics/${encodeURIComponent(topic)}/purge`, {}, (r) => `purged ${number(r.purged)} messages`);
}

function deleteGroup(topic, group) {
  act("purge-result", `Delete group ${group} of ${topic}, with everything it still owes? Its consumers are disconnected.`,
      `/api/topics/${encodeURIComponent(topic)}/groups/${encodeURIComponent(group)}/delete`, {},
      () => `deleted group ${group}`);
}

function replay(topic) {
  act("replay-result", `Re-publish the dead letters of ${topic}.dlq to ${topic}?`,
      `/api/topics/${encodeURIComponent(topic)}/dlq/replay`, {}, (r) => r.summary);
}

// ------------------------------------------------------------------ connections

function buildConnections(main) {
  main.append(el("div", { id: "view-connections" },
    el("h1", {}, "Connections"),
    el("p", { class: "subtitle", id: "connections-line" }),
    el("section", { class: "panel" },
      el("table", { id: "connections-table" }, el("thead", {}, el("tr", {},
        ["Address", "Role", "Topic", "Group", "Name"].map((h) => el("th", { class: "text" }, h)),
        ["Connected", "In flight", "Bytes in", "Bytes out"].map((h) => el("th", {}, h)))),
        el("tbody", { id: "connections-body" })))));
}

function refreshConnections() {
  const { count, connections } = state.live.connections;
  setText("connections-line", connections.length < count ? `${number(count)} open connections (the oldest ${connections.length} shown)` : `${number(count)} open connections`);
  const now = Date.now();
  const body = document.getElementById("connections-body");
  body.replaceChildren(...(connections.length ? connections.map((c) => el("tr", { "data-peer": c.peer },
    el("td", { class: "text" }, c.peer), el("td", { class: "text" }, el("span", { class: `role ${c.role}` }, c.role)),
    el("td", { class: "text" }, c.topic ? el("a", { href: `#/topic/${encodeURIComponent(c.topic)}` }, c.topic) : "–"),
    el("td", { class: "text" }, c.group || "–"), el("td", { class: "text" }, c.name || "–"),
    el("td", { title: new Date(c.connected_ms).toLocaleString("en-GB") }, `${clock(c.connected_ms)} (${duration((now - c.connected_ms) / 1000)} ago)`),
    el("td", {}, number(c.inflight)), el("td", {}, bytes(c.bytes_in)), el("td", {}, bytes(c.bytes_out))))
    : [el("tr", {}, el("td", { colspan: 9, class: "empty" }, "No client is connected."))]));
}

// ------------------------------------------------------------------ start

document.getElementById("logout").addEventListener("click", async () => {
  await api("/api/logout", { method: "POST", body: {} });
  loggedOut("logged out");
});
window.addEventListener("hashchange", () => { if (state.session) route(); });
boot();
