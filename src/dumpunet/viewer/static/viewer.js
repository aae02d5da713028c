// dumpunet view: the page. State lives in the URL query (the server's ViewState fields);
// every change re-requests /api/image and /api/command with that query. No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
let DEFAULTS = {};
let state = {};
let info = null;        // /api/structure of the current store
let seq = 0;            // the latest image request; older answers are dropped
let grid = null;        // X-Grid of the shown picture: cols, rows, tile h, tile w
let tiles = null;       // X-Channels of the shown picture: the channel of each tile (null: 0, 1, 2, ...)
let playing = null;
let colours = {};       // the shown view's colours (/api/command's "color"): an empty colour field is the view's default

// A static report (dumpunet view --export) carries the server's answers in report.js.
const REPORT = window.DUMPUNET_REPORT || null;

const FIELDS_NUMERIC = ["clamp_min", "clamp_max", "gain", "offset"];
const FIELDS_TEXT = ["r", "g", "b", "h", "s", "l"];
const FIELDS_SELECT = ["method", "transform", "auto_scope", "space", "image", "guidance", "which", "average",
  "layer", "head"];
const FIELDS_DEFAULTED = ["transform", "space", ...FIELDS_TEXT];  // empty: the view's default (a difference's: diff's)

// A colour field as drawn: the state's, or (left empty) the view's default that the server reported.
function colour(k) {
  return state[k] !== "" ? state[k] : (colours[k] ?? "");
}

function run() {
  if (!info) return null;
  let name = state.run || info.default_run;
  if (state.pair) {
    const p = info.pairs.find((q) => q.label === state.pair);
    if (p) name = state.mode === "base" ? p.base : p.layered;
  }
  return info.runs.find((r) => r.name === name) || info.runs[0];
}

// The page's URL holds the state plus "compare" (a second store shown beside); image and command
// requests leave "compare" out (page: true keeps it).
function query(extra, page) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(state)) {
    if (String(v) !== String(DEFAULTS[k]) && (page || k !== "compare")) q.set(k, v);
  }
  for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
  return q.toString();
}

function set(changes) {
  Object.assign(state, changes);
  // one range per head row exists in attention grids only: elsewhere fall back to the view's default
  if (state.view !== "attention" && state.auto_scope === "head") state.auto_scope = "";
  history.replaceState(null, "", "?" + query({}, true));
  sync();
  refresh();
}

async function getJSON(url) {
  if (REPORT) return url === "/api/stores" ? REPORT.stores : REPORT.structures[Number(url.split("store=")[1])];
  const res = await fetch(url);
  const body = await res.json();
  if (!res.ok) throw new Error(body.error);
  return body;
}

function showError(text) {
  $("error").hidden = !text;
  $("error").textContent = text || "";
}

// The current view of store `store` (default: the page's): {src, grid, command, query, download};
// throws the server's (or the report's) error message.
async function picture(store) {
  if (REPORT) return reportPicture(store === undefined ? state.store : store);
  const q = query(store === undefined ? {} : { store });
  const [res, cmd] = await Promise.all([fetch("/api/image?" + q), fetch("/api/command?" + q)]);
  if (!res.ok) throw new Error((await res.json().catch(() => ({ error: res.statusText }))).error);
  const [blob, command] = await Promise.all([res.blob(), cmd.json()]);
  return { src: URL.createObjectURL(blob), grid: res.headers.get("X-Grid") || "",
    channels: res.headers.get("X-Channels") || "", command: command.command, query: q, color: command.color,
    download: "/api/image?" + query({ ...(store === undefined ? {} : { store }), download: 1 }) };
}

// The report's views are keyed by the fields that decide them, resolved as the server resolves
// them (dumpunet.viewer.report.view_key builds the same keys).
const KEY_FIELDS = { grid: ["which", "block", "channels", "average", "step", "image", "guidance"],
  attention: ["layer", "head", "token", "step", "image", "guidance"], heatmap: ["token", "step", "image", "guidance"],
  summary: ["which", "step", "image", "guidance"], final: ["image"] };
const FIELDS_COLOUR = [...FIELDS_NUMERIC, ...FIELDS_TEXT, "method", "transform", "auto_scope", "space", "alpha"];

function reportPicture(store) {
  const changed = FIELDS_COLOUR.filter((k) => String(state[k]) !== String(DEFAULTS[k]));
  if (changed.length || Number(state.channel) >= 0 || !KEY_FIELDS[state.view]) {
    throw new Error("this static report holds channel grids, attention, word heatmaps, summary charts and final "
      + "images in the default colours; `dumpunet view STORE` serves every other view");
  }
  const resolved = { ...state, store, step: currentStep(), block: currentBlock(), layer: state.layer || $("layer").value };
  const key = Object.fromEntries(["store", "view", ...KEY_FIELDS[state.view]].map((n) => [n, resolved[n]]));
  if (Number(state.minus) >= 0) Object.assign(key, { run: run().name, minus: state.minus });
  else if (state.pair && (state.mode === "diff" || state.view === "summary")) Object.assign(key, { pair: state.pair, mode: "diff" });
  else key.run = run().name;
  const entry = REPORT.views[Object.keys(key).sort().map((n) => `${n}=${key[n]}`).join("&")];
  if (!entry) {
    throw new Error("this view was not exported into the report (see its --blocks, --steps, --images, --guidance, "
      + "--channels)");
  }
  if (entry.error) throw new Error(entry.error);
  return { src: entry.file, grid: entry.grid.join(","), channels: "", command: entry.command, query: entry.query,
    download: entry.file, color: entry.color };
}

function show(img, shown) {
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = shown.src;
}

// <body data-requested="n" data-settled="n">: view n was asked for, and view n shows (its
// pictures drawn, or its error). Scripts and the browser tests wait on these, not on time.
async function refresh() {
  const mine = ++seq;
  document.body.dataset.requested = String(mine);
  try {
    // picture and command together, so the page never shows one view's command under another's picture
    const shown = await picture();
    if (mine !== seq) return;
    grid = shown.grid.split(",").filter(Boolean).map(Number);
    tiles = shown.channels ? expandInts(shown.channels) : null;
    $("download").href = shown.download;
    $("picture").dataset.query = shown.query;
    $("command").textContent = shown.command || "(no single command writes this picture)";
    colours = shown.color || {};
    syncColour();
    show($("picture"), shown);
    showError("");
    await $("picture").decode().catch(() => {});  // drawn (a broken picture settles too)
  } catch (err) {
    if (mine === seq) showError(String(err.message || err));
  }
  if (mine !== seq) return;
  await refreshBeside(mine);
  if (mine === seq) document.body.dataset.settled = String(mine);
}

// The same view of the second store ("compare"), beside the first.
async function refreshBeside(mine) {
  $("frame2").hidden = state.compare === "";
  if (state.compare === "") return;
  try {
    const shown = await picture(state.compare);
    if (mine !== seq) return;
    $("error2").hidden = true;
    show($("picture2"), shown);
    await $("picture2").decode().catch(() => {});
  } catch (err) {
    if (mine !== seq) return;
    $("error2").hidden = false;
    $("error2").textContent = String(err.message || err);
    $("picture2").removeAttribute("src");
  }
}

function option(sel, values, labels) {
  const old = sel.value;
  sel.replaceChildren(...values.map((v, i) => {
    const o = document.createElement("option");
    o.value = v;
    o.textContent = labels ? labels[i] : v;
    return o;
  }));
  if (values.map(String).includes(old)) sel.value = old;
}

function buildLadder() {
  const r = run();
  const recorded = new Set(state.which === "input" ? r.inputs : r.blocks);
  const ins = info.blocks.filter((b) => b.name.startsWith("IN"));
  const outs = info.blocks.filter((b) => b.name.startsWith("OUT"));
  const mids = info.blocks.filter((b) => !b.name.startsWith("IN") && !b.name.startsWith("OUT"));
  const rows = Math.max(ins.length, outs.length);
  const cell = (b, cls) => {
    const el = document.createElement("button");
    el.className = "block " + (cls || "");
    if (!b) { el.disabled = true; el.style.visibility = "hidden"; return el; }
    const shape = state.which === "input" ? b.input_shape : b.shape;
    el.innerHTML = `${b.name}<small>${shape ? shape.join("\u00d7") : ""}</small>`;
    el.dataset.block = b.name;
    el.title = `${b.name}: ${shape ? shape.join(" x ") + " (channels x height x width)" : "shape unknown"}`;
    el.disabled = !recorded.has(b.name) && !hasLayer(r, b.name);
    el.onclick = () => chooseBlock(b.name);
    return el;
  };
  const els = [];
  for (let i = 0; i < rows; i++) {
    els.push(cell(ins[i]), cell(outs[rows - 1 - i]));  // the OUT side climbs back up: a U
  }
  for (const m of mids) els.push(cell(m, "mid"));
  $("ladder").replaceChildren(...els);
}

function hasLayer(r, block) {
  return r.layers.some((l) => l.name.split(".")[0] === block && l.cross);
}

function chooseBlock(name) {
  const r = run();
  if (state.view === "attention" && hasLayer(r, name)) {
    set({ layer: r.layers.find((l) => l.name.split(".")[0] === name && l.cross).name });
  } else if ((state.which === "input" ? r.inputs : r.blocks).includes(name)) {
    set({ block: name, channel: -1, view: ["attention", "final", "summary"].includes(state.view) ? "grid" : state.view });
  }
}

function currentBlock() {
  if (state.view === "attention") return (state.layer || $("layer").value || "").split(".")[0];
  const r = run();
  const list = state.which === "input" ? r.inputs : r.blocks;
  return state.block || list[list.length - 1];
}

function moveBlock(delta) {
  const r = run();
  const ok = info.blocks.map((b) => b.name).filter((n) =>
    state.view === "attention" ? hasLayer(r, n) : (state.which === "input" ? r.inputs : r.blocks).includes(n));
  const i = ok.indexOf(currentBlock());
  const next = ok[Math.min(ok.length - 1, Math.max(0, (i < 0 ? 0 : i) + delta))];
  if (next) chooseBlock(next);
}

function currentStep() {
  const steps = run().steps;
  return Number(state.step) || steps[steps.length - 1];
}

function moveStep(delta) {
  const steps = run().steps;
  if (!steps.length) return;
  const i = steps.indexOf(currentStep());
  set({ step: steps[(i + delta + steps.length) % steps.length] });
}

function buildTokens() {
  const r = run();
  const half = state.guidance;
  const toks = r.tokens[half] || [];
  const els = [];
  const head = document.createElement("span");
  head.className = "half";
  head.textContent = toks.length ? (half === "cond" ? "prompt:" : "negative prompt:") : "";
  els.push(head);
  toks.forEach((t, i) => {
    const el = document.createElement("span");
    el.className = "token" + (Number(state.token) === i ? " on" : "");
    el.textContent = t;
    el.dataset.index = i;
    el.title = `token ${i}`;
    el.onclick = () => {
      const same = Number(state.token) === i;
      const view = ["attention", "heatmap"].includes(state.view) ? state.view : "heatmap";
      set({ token: same ? -1 : i, view });
    };
    els.push(el);
  });
  $("tokens").replaceChildren(...els);
}

// Bring every control in line with the state and the store.
function sync() {
  if (!info) return;
  const r = run();
  $("store").value = state.store;
  const others = [...$("store").options].filter((o) => o.value !== String(state.store));
  option($("compare"), ["", ...others.map((o) => o.value)], ["(none)", ...others.map((o) => o.textContent)]);
  $("compare").value = state.compare;
  option($("minus"), ["-1", ...others.map((o) => o.value)], ["(none)", ...others.map((o) => o.textContent)]);
  $("minus").value = state.minus;
  document.querySelector('#views [data-view="summary"]').hidden = !state.pair && Number(state.minus) < 0;
  $("comparebox").hidden = others.length === 0;
  option($("run"), info.runs.map((x) => x.name));
  $("run").value = r.name;
  $("runbox").hidden = info.runs.length < 2 || Boolean(state.pair);
  $("pairbox").hidden = info.pairs.length === 0;
  option($("pair"), ["", ...info.pairs.map((p) => p.label)], ["(none)", ...info.pairs.map((p) => p.label)]);
  $("pair").value = state.pair;
  for (const b of document.querySelectorAll("#mode button")) b.classList.toggle("on", b.dataset.mode === state.mode);
  for (const b of document.querySelectorAll("#views button")) b.classList.toggle("on", b.dataset.view === state.view);
  const steps = r.steps;
  $("step").max = Math.max(0, steps.length - 1);
  const step = currentStep();
  $("step").value = Math.max(0, steps.indexOf(step));
  $("steplabel").textContent = steps.length ? `step ${step} of ${r.total_steps}` : "no complete step yet";
  option($("image"), [...Array(r.n_images).keys()].map(String));
  option($("guidance"), r.guidance);
  const cross = r.layers.filter((l) => l.cross);
  option($("layer"), cross.map((l) => l.name));
  const layer = cross.find((l) => l.name === state.layer) || cross[0];
  option($("head"), ["all", "mean", ...(layer ? [...Array(layer.heads).keys()].map(String) : [])],
    ["all heads", "mean", ...(layer ? [...Array(layer.heads).keys()].map((k) => `head ${k}`) : [])]);
  for (const id of FIELDS_SELECT) if (id in state) $(id).value = state[id];
  if (!state.layer && layer) $("layer").value = layer.name;
  for (const id of [...FIELDS_NUMERIC, "alpha", "channels"]) {
    if (document.activeElement !== $(id)) $(id).value = state[id];
  }
  syncColour();
  $("allchannels").hidden = Number(state.channel) < 0;
  $("where").textContent = describe(r);
  buildLadder();
  for (const b of document.querySelectorAll("#ladder .block")) b.classList.toggle("on", b.dataset.block === currentBlock());
  buildTokens();
}

// The colour controls: each field as drawn (colour()), and only the controls that apply.
function syncColour() {
  for (const id of FIELDS_DEFAULTED) {
    if (document.activeElement !== $(id)) $(id).value = colour(id);
  }
  const col = $("colour");
  const show = (cls, on) => col.querySelectorAll("." + cls).forEach((e) => { e.hidden = !on; });
  const pca = state.method === "PCA";  // a basis colours the pixels: no transform, range or expressions
  const transform = colour("transform"), space = colour("space");
  show("notpca", !pca);
  show("linear", !pca && transform === "linear");
  show("sigmoid", !pca && transform === "sigmoid");
  show("auto", !pca && transform.startsWith("auto"));
  const perHead = $("auto_scope").querySelector('option[value="head"]');
  perHead.hidden = perHead.disabled = state.view !== "attention";  // offered only where it applies
  show("custom", state.method === "Custom");
  if (state.method === "Custom") { show("rgb", space === "rgb"); show("hsl", space === "hsl"); }
}

function describe(r) {
  const v = state.view;
  const what = v === "grid" ? `${currentBlock()} ${state.which}` + (Number(state.channel) >= 0 ? `, channel ${state.channel}`
    : state.channels ? `, channels ${state.channels}` : "")
    + (state.average ? `, ${state.average} over channels` : "")
    : v === "attention" ? `${state.layer || $("layer").value}, heads ${state.head}` + (Number(state.token) >= 0 ? `, token ${state.token}` : "")
    : v === "heatmap" ? (Number(state.token) >= 0 ? `word heatmap of token ${state.token}` : "click a token below")
    : v === "query" ? `query pixel (${Number(state.qx).toFixed(2)}, ${Number(state.qy).toFixed(2)}): click the image`
    : v === "summary" ? "summary chart: how much each block changed, per step"
    : "final image";
  const pair = state.pair ? ` | pair ${state.pair}: ${state.mode}` : ` | run ${r.name}`;
  const minus = Number(state.minus) >= 0 ? ` \u2212 store ${$("minus").selectedOptions[0].textContent}` : "";
  return what + pair + minus;
}

async function loadStructure() {
  info = await getJSON(`/api/structure?store=${state.store}`);
  const r = run();
  $("live").textContent = REPORT ? "static report (default colours)"
    : info.runs.every((x) => x.complete) ? "" : `recording in progress: ${r.steps.length} steps so far`;
}

async function poll() {
  if (REPORT) return;  // a report is a snapshot
  try {
    const before = info && info.generation;
    await loadStructure();
    if (info.generation !== before) { sync(); if (Number(state.step) === 0) refresh(); }
  } catch (err) { /* the server went away: keep the page as it is */ }
  setTimeout(poll, info && info.runs.every((x) => x.complete) ? 10000 : 1500);
}

// "0-3,7" (the server's format_ints) -> [0, 1, 2, 3, 7]
function expandInts(text) {
  return text.split(",").flatMap((part) => {
    const [a, b] = part.split("-").map(Number);
    return Array.from({ length: (b === undefined ? a : b) - a + 1 }, (_, k) => a + k);
  });
}

function pickOnImage(ev) {
  const img = $("picture");
  const fx = ev.offsetX / img.clientWidth, fy = ev.offsetY / img.clientHeight;
  if (state.view === "query" || (state.view === "final" && run().layers.some((l) => !l.cross))) {
    set({ view: "query", qx: fx.toFixed(3), qy: fy.toFixed(3) });
  } else if (state.view === "grid" && grid && grid.length === 4 && Number(state.channel) < 0 && !state.average) {
    const [cols, rows, th, tw] = grid;
    const x = fx * img.naturalWidth, y = fy * img.naturalHeight;
    const c = Math.floor(x / (tw + 1)), rr = Math.floor(y / (th + 1));
    const k = rr * cols + c;
    if (c < cols && rr < rows && (!tiles || k < tiles.length)) set({ channel: tiles ? tiles[k] : k });
  }
}

function wire() {
  $("store").onchange = async () => { state = { ...fresh(), store: $("store").value }; info = null; await start(); };
  $("compare").onchange = () => set({ compare: $("compare").value });
  $("minus").onchange = () => set({ minus: $("minus").value });
  $("run").onchange = () => set({ run: $("run").value, step: 0 });
  $("pair").onchange = () => set({ pair: $("pair").value });
  for (const b of document.querySelectorAll("#mode button")) b.onclick = () => set({ mode: b.dataset.mode });
  for (const b of document.querySelectorAll("#views button")) b.onclick = () => set({ view: b.dataset.view });
  $("step").oninput = () => set({ step: run().steps[Number($("step").value)] });
  $("play").onclick = togglePlay;
  for (const id of FIELDS_SELECT) $(id).onchange = () => set({ [id]: $(id).value, ...(id === "which" ? { block: "" } : {}) });
  let timer = null;
  for (const id of [...FIELDS_NUMERIC, ...FIELDS_TEXT, "alpha"]) {
    $(id).oninput = () => { clearTimeout(timer); timer = setTimeout(() => set({ [id]: $(id).value }), 250); };
  }
  $("allchannels").onclick = () => set({ channel: -1 });
  $("channels").oninput = () => {
    clearTimeout(timer);
    timer = setTimeout(() => set({ channels: $("channels").value.trim(), channel: -1 }), 250);
  };
  $("picture").onclick = pickOnImage;
  $("copy").onclick = async () => {
    const text = $("command").textContent;
    try { await navigator.clipboard.writeText(text); $("copy").textContent = "copied"; }
    catch (err) { getSelection().selectAllChildren($("command")); }
    setTimeout(() => { $("copy").textContent = "copy CLI command"; }, 1200);
  };
  document.addEventListener("keydown", (ev) => {
    if (["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName) && document.activeElement.id !== "step") return;
    if (ev.key === "ArrowLeft" || ev.key === "ArrowRight") moveBlock(ev.key === "ArrowLeft" ? -1 : 1);
    else if (ev.key === "ArrowUp" || ev.key === "ArrowDown") moveStep(ev.key === "ArrowUp" ? 1 : -1);
    else if (ev.key === " ") togglePlay();
    else return;
    ev.preventDefault();
  });
}

function togglePlay() {
  if (playing) { clearInterval(playing); playing = null; $("play").innerHTML = "&#9654;"; return; }
  $("play").innerHTML = "&#10074;&#10074;";
  playing = setInterval(() => moveStep(1), 400);
}

async function start() {
  await loadStructure();
  if (info.pairs.length && !state.pair && !new URLSearchParams(location.search).has("pair")) state.pair = info.pairs[0].label;
  history.replaceState(null, "", "?" + query({}, true));
  sync();
  await refresh();
}

// A state with nothing chosen yet: the defaults, and a report's channel subset (its grids show no other).
function fresh() {
  return { ...DEFAULTS, ...(REPORT && REPORT.channels ? { channels: REPORT.channels } : {}) };
}

async function main() {
  const stores = await getJSON("/api/stores");
  DEFAULTS = { ...stores.defaults, compare: "" };
  option($("store"), stores.stores.map((s) => String(s.index)), stores.stores.map((s) => s.name));
  $("store").hidden = stores.stores.length < 2;
  state = { ...fresh(), ...Object.fromEntries(new URLSearchParams(location.search)) };
  wire();
  $("colour").hidden = Boolean(REPORT);
  try { await start(); } catch (err) { showError(String(err.message || err)); }
  setTimeout(poll, 1500);
}

main();
