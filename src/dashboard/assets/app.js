// photoq's dashboard: plain JavaScript modules, no framework, no build step. Every piece of
// data goes through the public API with the signed-in key; text from the API is set as
// text (never as HTML).

const KEY = "photoq.key";
const HISTORY_SECS = 120;
const STATS_EVERY_MS = 2000;
const OPERATOR_EVERY_MS = 3000;

const state = {
  key: sessionStorage.getItem(KEY),
  me: null,
  events: null,
  lastEventId: null,
  // One sample per second: photos waiting or being processed, and photos finished.
  depth: [],
  finished: [],
  finishedThisSecond: 0,
  listeners: new Set(),
  timers: [],
  viewTimers: [],
};

// ---- small helpers -------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children.flat(Infinity)) if (c) el.append(c);
  return el;
}

function announce(text) {
  const el = document.getElementById("announce");
  el.textContent = "";
  setTimeout(() => { el.textContent = text; }, 50);
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function stateBadge(s) {
  return h("span", { class: `state state-${s}`, "data-state": s }, s.replaceAll("_", " "));
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("Authorization", `Bearer ${state.key}`);
  const res = await fetch(path, { ...options, headers });
  if (res.status === 401) {
    signOut("Your key was not accepted (revoked, or mistyped). Sign in again.");
    throw new ApiError(401, "unauthorized", "unauthorized");
  }
  if (!res.ok) {
    let code = "error";
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      code = body.error.code;
      message = body.error.message;
    } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, code, message);
  }
  const type = res.headers.get("Content-Type") || "";
  return type.includes("json") ? res.json() : res.blob();
}

function every(ms, fn, timers = state.viewTimers) {
  fn();
  timers.push(setInterval(fn, ms));
}

function clearViewTimers() {
  state.viewTimers.forEach(clearInterval);
  state.viewTimers = [];
  state.listeners.clear();
  for (const url of document.querySelectorAll("img[data-blob]")) URL.revokeObjectURL(url.src);
}

// ---- sign in and the live event stream ----------------------------------------------

async function signIn(key) {
  state.key = key;
  const me = await api("/v1/me");
  sessionStorage.setItem(KEY, key);
  state.me = me;
  document.getElementById("sign-in").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("key-name").textContent = me.operator ? `${me.name} (operator)` : me.name;
  document.getElementById("nav-operator").hidden = !me.operator;
  startLive();
  route();
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  state.key = null;
  state.me = null;
  if (state.events) state.events.close();
  state.events = null;
  // Event ids and charts are the key's own: the next key starts afresh.
  state.lastEventId = null;
  state.depth = [];
  state.finished = [];
  state.finishedThisSecond = 0;
  state.timers.forEach(clearInterval);
  state.timers = [];
  clearViewTimers();
  document.getElementById("view").replaceChildren();
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  const form = document.getElementById("sign-in");
  form.hidden = false;
  document.getElementById("sign-in-error").textContent = message || "";
  document.getElementById("api-key").value = "";
  document.getElementById("api-key").focus();
}

// Follows the key's events over SSE, authenticated by a short-lived stream token (an
// EventSource cannot send the key in a header). On an error it asks for a new token and
// resumes after the last event seen.
async function openEvents() {
  if (!state.key) return;
  const live = document.getElementById("live");
  try {
    const { token } = await api("/v1/events/tokens", { method: "POST" });
    const params = new URLSearchParams({ token });
    if (state.lastEventId !== null) params.set("after", state.lastEventId);
    const source = new EventSource(`/v1/events?${params}`);
    state.events = source;
    source.onopen = () => { live.textContent = "live"; };
    source.onerror = () => {
      live.textContent = "reconnecting…";
      source.close();
      if (state.events === source) setTimeout(openEvents, 2000);
    };
    const handle = (msg) => {
      const event = JSON.parse(msg.data);
      state.lastEventId = event.id;
      if (["photo.completed", "photo.failed", "photo.dead"].includes(event.type)) {
        state.finishedThisSecond += 1;
      }
      for (const fn of state.listeners) fn(event);
    };
    for (const type of ["photo.queued", "photo.processing", "photo.completed", "photo.failed",
      "photo.dead", "batch.started", "batch.completed",
      "batch.completed_with_errors", "product.processing", "product.processed",
      "product.process_error"]) {
      source.addEventListener(type, handle);
    }
    source.addEventListener("reset", () => { state.lastEventId = null; route(); });
  } catch (e) {
    live.textContent = "events unavailable";
    if (e.status !== 401) setTimeout(openEvents, 5000);
  }
}

function startLive() {
  openEvents();
  const sample = async () => {
    try {
      const s = await api("/v1/stats");
      push(state.depth, s.queued + s.processing);
    } catch (_) { push(state.depth, null); }
    push(state.finished, state.finishedThisSecond / (STATS_EVERY_MS / 1000));
    state.finishedThisSecond = 0;
    for (const fn of state.listeners) fn({ type: "tick" });
  };
  every(STATS_EVERY_MS, sample, state.timers);
}

function push(series, value) {
  series.push(value);
  while (series.length > HISTORY_SECS / (STATS_EVERY_MS / 1000)) series.shift();
}

// ---- charts -------------------------------------------------------------------------

function chart(title, series, unit) {
  const W = 400, H = 160, pad = 28;
  const values = series.filter((v) => v !== null);
  const peak = Math.max(0, ...values);
  const max = Math.max(1, peak);
  const n = HISTORY_SECS / (STATS_EVERY_MS / 1000);
  const x = (i) => pad + (i + n - series.length) * ((W - pad - 4) / (n - 1));
  const y = (v) => H - pad + 4 - (v / max) * (H - pad - 8);
  const points = series.map((v, i) => (v === null ? null : `${x(i).toFixed(1)},${y(v).toFixed(1)}`))
    .filter(Boolean).join(" ");
  const last = values.length ? values[values.length - 1] : 0;
  const label = `${title}: now ${round(last)} ${unit}, highest ${round(peak)} over the last ${HISTORY_SECS} seconds`;
  return h("figure", {},
    svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label, "data-peak": peak, preserveAspectRatio: "none" },
      svg("line", { class: "axis", x1: pad, y1: H - pad + 4, x2: W, y2: H - pad + 4 }),
      svg("line", { class: "axis", x1: pad, y1: 4, x2: pad, y2: H - pad + 4 }),
      text(svg, 2, 12, round(max)),
      text(svg, 2, H - pad + 4, "0"),
      text(svg, pad, H - 6, `−${HISTORY_SECS}s`),
      text(svg, W - 24, H - 6, "now"),
      points ? svg("polyline", { class: "line", points }) : null),
    h("figcaption", {}, `${title}: `, h("strong", { "data-now": title }, `${round(last)}`), ` ${unit}`));
}

function text(make, x, y, content) {
  const t = make("text", { x, y });
  t.textContent = content;
  return t;
}

function round(v) {
  return Math.round(v * 10) / 10;
}

// ---- views --------------------------------------------------------------------------

const views = {
  overview: viewOverview,
  batches: viewBatches,
  batch: viewBatch,
  photo: viewPhoto,
  "dead-letters": viewDeadLetters,
  operator: viewOperator,
};

function route() {
  if (!state.me) return;
  clearViewTimers();
  const hash = location.hash.replace(/^#\/?/, "");
  const [first, id] = hash.split("/");
  let name = first || "overview";
  if (name === "batches" && id) name = "batch";
  if (name === "photos" && id) name = "photo";
  const view = views[name] || viewOverview;
  const nav = first || "overview";
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const root = document.getElementById("view");
  root.replaceChildren();
  view(root, id).catch((e) => {
    root.replaceChildren(h("p", { class: "error", role: "alert" }, e.message));
  });
}

async function viewOverview(root) {
  document.title = "Overview · photoq";
  const charts = h("div", { class: "grid" });
  const draw = () => charts.replaceChildren(
    h("section", { class: "card", "aria-labelledby": "depth-title" },
      h("h2", { id: "depth-title" }, "Your queue"),
      chart("Waiting or processing", state.depth, "photos")),
    h("section", { class: "card", "aria-labelledby": "rate-title" },
      h("h2", { id: "rate-title" }, "Throughput"),
      chart("Finished", state.finished, "photos/s")));
  draw();
  state.listeners.add((e) => { if (e.type === "tick") draw(); });

  const input = h("input", { id: "upload-files", type: "file", multiple: true, accept: "image/*", required: true });
  const status = h("p", { class: "note", role: "status", "aria-live": "polite" });
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      const body = new FormData();
      for (const f of input.files) body.append("file", f, f.name);
      status.textContent = `Uploading ${input.files.length} photo(s)…`;
      try {
        const res = await api("/v1/photos", { method: "POST", body });
        status.textContent = `Batch ${res.batch_id} accepted.`;
        location.hash = `#/batches/${res.batch_id}`;
      } catch (err) {
        status.textContent = `Upload refused: ${err.message}`;
      }
    },
  },
  h("label", { for: "upload-files" }, "Photos to upload (one batch)"),
  input,
  h("button", { type: "submit" }, "Upload"),
  status);

  const recent = h("div");
  root.append(
    h("h1", {}, "Overview"),
    charts,
    h("div", { class: "grid" },
      h("section", { class: "card", "aria-labelledby": "upload-title" }, h("h2", { id: "upload-title" }, "Upload"), form),
      h("section", { class: "card", "aria-labelledby": "recent-title" },
        h("h2", { id: "recent-title" }, "Recent batches"), recent,
        h("p", {}, h("a", { href: "#/batches" }, "All batches")))));
  await liveBatchList(recent, 5);
}

async function viewBatches(root) {
  document.title = "Batches · photoq";
  const list = h("div");
  root.append(h("h1", {}, "Batches"), h("section", { class: "card" }, list));
  await liveBatchList(list, 50);
}

// A list of the newest batches: each row updated as its events arrive, and the list read
// again when an event names a batch it does not show (a new one).
async function liveBatchList(container, limit) {
  const rows = new Map();
  const load = async () => {
    const page = await api(`/v1/batches?limit=${limit}`);
    if (!page.batches.length) {
      container.replaceChildren(h("p", { class: "note" }, "No batches yet: upload some photos."));
      return;
    }
    rows.clear();
    const tbody = h("tbody");
    for (const b of page.batches) {
      const row = batchRow(b);
      rows.set(b.id, row);
      tbody.append(row);
    }
    container.replaceChildren(h("div", { class: "table-wrap" }, h("table", {},
      h("caption", { class: "visually-hidden" }, "Batches, newest first"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Batch"), h("th", { scope: "col" }, "State"),
        h("th", { scope: "col" }, "Progress"), h("th", { scope: "col" }, "Created"))),
      tbody)));
  };
  const reload = throttled(load);
  const refresh = throttled(async (id) => {
    updateBatchRow(rows.get(id), await api(`/v1/batches/${id}`));
  });
  // Listening before the first read: nothing that happens meanwhile is missed.
  state.listeners.add((e) => {
    if (!e.batch_id) return;
    if (rows.has(e.batch_id)) refresh(e.batch_id);
    else if (e.type === "photo.queued" || e.type === "batch.started") reload("list");
  });
  await load();
}

function batchRow(b) {
  const row = h("tr", { "data-batch": b.id },
    h("td", {}, h("a", { href: `#/batches/${b.id}`, class: "id" }, b.id)),
    h("td"), h("td"),
    h("td", {}, when(b.created_at)));
  updateBatchRow(row, b);
  return row;
}

// Updates a batch's row in place (its link, and the focus on it, stay).
function updateBatchRow(row, b) {
  const done = b.completed + b.failed + b.dead;
  row.dataset.state = b.state;
  row.children[1].replaceChildren(stateBadge(b.state));
  row.children[2].replaceChildren(progress(done, b.total, `Batch ${b.id}`),
    h("div", { class: "counts" }, `${done} of ${b.total} done`,
      b.failed ? ` · ${b.failed} failed` : "", b.dead ? ` · ${b.dead} dead` : ""));
}

function progress(done, total, label) {
  return h("progress", { max: total || 1, value: done, "aria-label": `${label}: ${done} of ${total} done` });
}

// Calls `fn(key)` at most once per 300 ms per key; a call while one runs is served after it.
function throttled(fn) {
  const busy = new Map();
  const call = (key) => {
    if (busy.has(key)) { busy.set(key, true); return; }
    busy.set(key, false);
    (async () => {
      try { await fn(key); } catch (_) { /* the next event tries again */ }
      setTimeout(() => {
        const again = busy.get(key);
        busy.delete(key);
        if (again) call(key);
      }, 300);
    })();
  };
  return call;
}

async function viewBatch(root, id) {
  document.title = "Batch · photoq";
  const head = h("div");
  const tbody = h("tbody");
  const rows = new Map();
  root.append(h("h1", {}, "Batch ", h("span", { class: "id" }, id)),
    h("section", { class: "card" }, head),
    h("section", { class: "card" }, h("h2", {}, "Photos"), h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Photo"), h("th", { scope: "col" }, "State"))),
      tbody))));
  let announced = false;
  const draw = async () => {
    const b = await api(`/v1/batches/${id}`);
    const done = b.completed + b.failed + b.dead;
    head.replaceChildren(
      h("p", {}, stateBadge(b.state)),
      progress(done, b.total, "This batch"),
      h("div", { class: "counts", id: "batch-counts" },
        h("span", {}, `${b.total} photos`), h("span", {}, `${b.queued} queued`),
        h("span", {}, `${b.processing} processing`), h("span", {}, `${b.completed} completed`),
        h("span", {}, `${b.failed} failed`), h("span", {}, `${b.dead} dead`)));
    // Rows are updated in place: a link keeps its focus while the states change.
    for (const p of b.photos) {
      let row = rows.get(p.id);
      if (!row) {
        row = h("tr", { "data-photo": p.id },
          h("td", {}, h("a", { href: `#/photos/${p.id}`, class: "id" }, p.id)), h("td"));
        rows.set(p.id, row);
        tbody.append(row);
      }
      if (row.dataset.state !== p.state) {
        row.dataset.state = p.state;
        row.children[1].replaceChildren(stateBadge(p.state));
      }
    }
    if (!announced && ["completed", "completed_with_errors", "failed"].includes(b.state)) {
      announced = true;
      announce(`Batch ${b.state.replaceAll("_", " ")}.`);
    }
  };
  const refresh = throttled(draw);
  state.listeners.add((e) => { if (e.batch_id === id) refresh(id); });
  await draw();
}

async function viewPhoto(root, id) {
  document.title = "Photo · photoq";
  let changed = false;
  state.listeners.add((e) => { if (e.photo_id === id && e.type !== "tick") changed = true; });
  const p = await api(`/v1/photos/${id}`);
  const retry = ["failed", "dead"].includes(p.state)
    ? h("button", {
      type: "button",
      onclick: async (e) => {
        e.target.disabled = true;
        try {
          await api(`/v1/photos/${id}/retry`, { method: "POST" });
          announce("Photo queued again.");
          route();
        } catch (err) { announce(`Retry refused: ${err.message}`); e.target.disabled = false; }
      },
    }, "Retry this photo")
    : null;
  const variants = h("div", { class: "variants" });
  root.append(
    h("h1", {}, p.filename || "Photo", " ", stateBadge(p.state)),
    h("section", { class: "card" },
      h("dl", { class: "exif" },
        h("dt", {}, "Id"), h("dd", { class: "id" }, p.id),
        h("dt", {}, "Batch"), h("dd", {}, h("a", { href: `#/batches/${p.batch_id}`, class: "id" }, p.batch_id)),
        h("dt", {}, "Attempts"), h("dd", {}, p.attempts),
        h("dt", {}, "Original"), h("dd", {}, p.original.width ? `${p.original.width} × ${p.original.height}` : "", p.original.bytes ? ` · ${p.original.bytes} bytes` : ""),
        h("dt", {}, "Uploaded"), h("dd", {}, when(p.created_at)),
        h("dt", {}, "Completed"), h("dd", {}, when(p.completed_at))),
      p.error ? h("p", { class: "error", role: "alert" }, `${p.error_code || "error"}: ${p.error}`) : null,
      retry),
    h("section", { class: "card", "aria-labelledby": "variants-title" }, h("h2", { id: "variants-title" }, "Variants"),
      p.variants.length ? variants : h("p", { class: "note" }, "None yet.")),
    h("section", { class: "card", "aria-labelledby": "exif-title" }, h("h2", { id: "exif-title" }, "EXIF"), exifList(p.exif)),
    h("section", { class: "card", "aria-labelledby": "history-title" }, h("h2", { id: "history-title" }, "Attempts"), history(p.history || [])));
  for (const v of p.variants) {
    const img = h("img", { alt: `${v.name} variant, ${v.width} by ${v.height} pixels`, width: v.width, height: v.height, "data-blob": true });
    variants.append(h("figure", {}, img, h("figcaption", {}, `${v.name} · ${v.width}×${v.height} · ${v.content_type} · ${v.bytes} bytes`)));
    // The bytes through the API even where storage serves by redirects: the page may
    // only connect to its own origin.
    api(`${v.url}${v.url.includes("?") ? "&" : "?"}redirect=false`).then((blob) => { img.src = URL.createObjectURL(blob); }).catch(() => { img.alt += " (could not load)"; });
  }
  // Shown again when the photo changes (and if it changed while it was being read).
  if (changed) route();
  else state.listeners.add((e) => { if (e.photo_id === id && e.type !== "tick") route(); });
}

// The named EXIF fields as a list, and every raw tag in a table that opens on demand.
function exifList(exif) {
  if (!exif || typeof exif !== "object" || !Object.keys(exif).length) return h("p", { class: "note" }, "No EXIF.");
  const { tags, ...named } = exif;
  const flat = [];
  const walk = (prefix, value) => {
    if (value === null || value === undefined) return;
    if (typeof value === "object" && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) walk(prefix ? `${prefix}.${k}` : k, v);
    } else flat.push([prefix, String(value)]);
  };
  walk("", named);
  const raw = Array.isArray(tags) && tags.length
    ? h("details", {}, h("summary", {}, `All ${tags.length} tags`),
      table(["Directory", "Tag", "Name", "Value"], tags.map((t) => [t.ifd, t.tag, t.name, t.value])))
    : null;
  return [flat.length
    ? h("dl", { class: "exif" }, flat.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))
    : h("p", { class: "note" }, "No named fields."), raw];
}

function history(attempts) {
  if (!attempts.length) return h("p", { class: "note" }, "No attempt yet.");
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["#", "Outcome", "Worker", "Started", "Took", "Error"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, attempts.map((a) => h("tr", {},
      h("td", {}, a.attempt), h("td", {}, a.outcome), h("td", { class: "id" }, a.worker),
      h("td", {}, when(a.started_at)), h("td", {}, a.duration_ms !== null && a.duration_ms !== undefined ? `${a.duration_ms} ms` : ""),
      h("td", {}, a.error || ""))))));
}

async function viewDeadLetters(root) {
  document.title = "Dead letters · photoq";
  const list = h("div");
  const status = h("p", { class: "note", role: "status", "aria-live": "polite" });
  const redrive = h("button", {
    type: "button",
    id: "redrive-all",
    onclick: async () => {
      redrive.disabled = true;
      try {
        const res = await api("/v1/dead-letters/redrive", {
          method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
        });
        status.textContent = `${res.redriven} photo(s) queued again.`;
        await draw();
      } catch (err) { status.textContent = `Redrive refused: ${err.message}`; }
      redrive.disabled = false;
    },
  }, "Redrive all");
  root.append(h("h1", {}, "Dead letters"),
    h("section", { class: "card" },
      h("p", { class: "note" }, "Photos that ran out of attempts. Fix the cause, then retry one or redrive them all with a fresh attempt budget."),
      redrive, status, list));
  const draw = async () => {
    const page = await api("/v1/dead-letters?limit=200");
    redrive.hidden = !page.photos.length;
    if (!page.photos.length) {
      list.replaceChildren(h("p", { class: "note", id: "no-dead" }, "No dead letters."));
      return;
    }
    list.replaceChildren(h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Photo", "Error", "Attempts", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, page.photos.map((p) => h("tr", { "data-photo": p.id },
        h("td", {}, h("a", { href: `#/photos/${p.id}`, class: "id" }, p.filename || p.id)),
        h("td", {}, `${p.error_code || ""} ${p.error || ""}`),
        h("td", {}, p.attempts),
        h("td", {}, h("button", {
          type: "button",
          class: "secondary",
          "aria-label": `Retry ${p.filename || p.id}`,
          onclick: async (e) => {
            e.target.disabled = true;
            try {
              await api(`/v1/photos/${p.id}/retry`, { method: "POST" });
              status.textContent = `${p.filename || p.id} queued again.`;
              await draw();
            } catch (err) { status.textContent = `Retry refused: ${err.message}`; e.target.disabled = false; }
          },
        }, "Retry"))))))));
  };
  const refresh = throttled(draw);
  state.listeners.add((e) => { if (e.type === "photo.dead") refresh("dead"); });
  await draw();
}

async function viewOperator(root) {
  document.title = "Operator · photoq";
  if (!state.me.operator) {
    root.append(h("p", { class: "error", role: "alert" }, "This view needs an operator key (photoq keys create --operator)."));
    return;
  }
  const body = h("div");
  const failed = h("p", { class: "error", role: "alert" });
  root.append(h("h1", {}, "Operator"), h("p", { class: "note" }, "The whole queue, every owner; aggregates only."), failed, body);
  const draw = async () => {
    const o = await api("/v1/operator/overview");
    const active = o.workers.filter((w) => w.active).length;
    body.replaceChildren(
      h("section", { class: "card stats", "aria-label": "Queue-wide counts" },
        statBox("Queued", o.unfinished.queued), statBox("Processing", o.unfinished.processing),
        statBox("Waiting entries", o.lanes.reduce((s, l) => s + l.waiting, 0)),
        statBox("Scheduled retries", o.lanes.reduce((s, l) => s + l.scheduled, 0)),
        statBox("Dead letters", o.dead_letters), statBox("Active workers", active),
        statBox("Oldest wait", o.oldest_waiting_secs === null || o.oldest_waiting_secs === undefined ? "–" : `${round(o.oldest_waiting_secs)} s`)),
      h("section", { class: "card" }, h("h2", {}, "Lanes"), table(["Lane", "Entries", "Delivered", "Waiting (lag)", "Scheduled retries"],
        o.lanes.map((l) => [l.lane, l.entries, l.pending, l.waiting, l.scheduled]))),
      h("section", { class: "card" }, h("h2", {}, "Workers seen"), o.workers.length
        ? table(["Worker", "Lane", "Delivered to it", "Idle", "Active"],
          o.workers.map((w) => [w.name, w.lane, w.pending, `${round(w.idle_ms / 1000)} s`, w.active ? "yes" : "no"]))
        : h("p", { class: "note" }, "No worker has joined the queue yet.")),
      h("section", { class: "card" }, h("h2", {}, `Error codes, last ${o.error_window_minutes} minutes`), o.recent_errors.length
        ? table(["Code", "Attempts"], o.recent_errors.map((e) => [e.code, e.attempts]))
        : h("p", { class: "note" }, "No errors.")));
  };
  // A failed refresh keeps the last figures on the page and says so above them.
  every(OPERATOR_EVERY_MS, () => draw()
    .then(() => { failed.textContent = ""; })
    .catch((e) => { failed.textContent = `Not refreshed: ${e.message}`; }));
}

function statBox(label, value) {
  return h("div", {}, h("div", { class: "note" }, label), h("div", { class: "stat" }, value));
}

function table(headers, rows) {
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c)))))));
}

// ---- start --------------------------------------------------------------------------

document.getElementById("sign-in-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const key = document.getElementById("api-key").value.trim();
  const error = document.getElementById("sign-in-error");
  error.textContent = "";
  try {
    await signIn(key);
    document.getElementById("main").focus();
  } catch (err) {
    if (err.status !== 401) error.textContent = err.message;
  }
});
document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);

if (state.key) {
  signIn(state.key).catch(() => signOut());
} else {
  signOut();
}
