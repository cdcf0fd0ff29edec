// The lab panel: one WebSocket of frames from `lab up`, merged into `LabState`; a canvas for
// the topology (redrawn on animation frames), the rest as DOM updated at most four times a
// second, whatever the traffic; operations are POSTs to `/api/op`.

import "./style.css";
import { LabState, connect } from "./state";
import { STATE_COLOURS, Topology } from "./topology";
import { drawTimeline, pathSummary } from "./timeline";
import type { Histogram, Op, OpResult, Update } from "./types";
import { mountLessons } from "./lessons";

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing`);
  return el as T;
};

const esc = (s: string) =>
  s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);

const state = new LabState();
const topology = new Topology($<HTMLCanvasElement>("topology"), state);
/** The message the timeline shows when frozen; otherwise the topology's current one. */
let selected: string | undefined;
let domVersion = -1;
let lastDom = 0;

async function op(o: Op): Promise<OpResult> {
  $("op-result").textContent = "…";
  try {
    const r = await fetch("/api/op", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(o),
    });
    const result: OpResult = r.ok
      ? ((await r.json()) as OpResult)
      : { ok: false, message: `the lab refused it (${r.status}): ${await r.text()}` };
    const el = $("op-result");
    el.textContent = result.message;
    el.dataset.ok = String(result.ok);
    // Answers so far: what a test waits on.
    el.dataset.answers = String(Number(el.dataset.answers ?? 0) + 1);
    return result;
  } catch (e) {
    const message = `the lab did not answer: ${e}`;
    $("op-result").textContent = message;
    return { ok: false, message };
  }
}

// ---- controls

$("add-node").onclick = () => void op({ op: "add_node" });
$("routing-routed").onclick = () => void op({ op: "set_routing", routing: "routed" });
$("routing-fanout").onclick = () => void op({ op: "set_routing", routing: "fanout" });
$("restart-backends").onclick = () =>
  void op({ op: "set_backends", name: $<HTMLSelectElement>("backends").value });
$("apply-users").onclick = () =>
  void op({
    op: "users",
    users: Number($<HTMLInputElement>("users").value),
    devices_per_user: Number($<HTMLInputElement>("devices").value),
  });
$("burst").onclick = () => void op({ op: "burst", logins: 200 });
$("end-burst").onclick = () => void op({ op: "end_burst" });
$("settle").onclick = () => void op({ op: "settle" });
$("reset-checker").onclick = () => void op({ op: "reset_checker" });

let rateTimer: number | undefined;
const sendRate = () => {
  const per_sec = Number($<HTMLInputElement>("rate").value);
  const room_share = Number($<HTMLInputElement>("rooms").value) / 100;
  $("rate-value").textContent = `${per_sec} msg/s`;
  $("rooms-value").textContent = `${Math.round(room_share * 100)}%`;
  clearTimeout(rateTimer);
  rateTimer = window.setTimeout(() => void op({ op: "rate", per_sec, room_share }), 250);
};
$("rate").oninput = sendRate;
$("rooms").oninput = sendRate;
let slidersTouched = false;
for (const id of ["rate", "rooms"]) $(id).addEventListener("pointerdown", () => (slidersTouched = true));
let usersTouched = false;
for (const id of ["users", "devices"]) $(id).addEventListener("input", () => (usersTouched = true));

$("nodes").addEventListener("click", (ev) => {
  const b = (ev.target as HTMLElement).closest("button");
  if (!b?.dataset.op || !b.dataset.node) return;
  void op({ op: b.dataset.op, node: b.dataset.node } as Op);
});

$("messages").addEventListener("click", (ev) => {
  const li = (ev.target as HTMLElement).closest("li");
  if (!li?.dataset.id) return;
  // Clicking the frozen message releases it; another one freezes that one.
  selected = selected === li.dataset.id ? undefined : li.dataset.id;
  topology.frozen = selected;
  domVersion = -1;
});

// ---- DOM views

const FAULTS: [string, string][] = [
  ["kill", "kill"], ["stop", "stop"], ["freeze", "freeze"], ["thaw", "thaw"],
  ["restart", "restart"], ["cut_bus", "cut bus"], ["restore_bus", "restore"],
];

let nodeSlots = "";
function renderNodes(u: Update): void {
  const body = $("nodes").querySelector("tbody")!;
  const slots = u.cluster.nodes.map((n) => n.slot).join(",");
  if (slots !== nodeSlots) {
    nodeSlots = slots;
    body.innerHTML = u.cluster.nodes
      .map(
        (n) =>
          `<tr data-slot="${esc(n.slot)}"><td class="id"></td><td class="state"></td><td class="conn"></td><td class="res"></td><td class="lease"></td><td class="in"></td><td class="out"></td><td class="devices"></td><td>${FAULTS.map(
            ([o, label]) => `<button data-op="${o}" data-node="${esc(n.slot)}">${label}</button>`,
          ).join("")}</td></tr>`,
      )
      .join("");
  }
  for (const n of u.cluster.nodes) {
    const row = body.querySelector<HTMLTableRowElement>(`tr[data-slot="${CSS.escape(n.slot)}"]`);
    if (!row) continue;
    const state = n.bus_cut ? `${n.state}, bus cut` : n.state;
    set(row, ".id", n.id);
    set(row, ".state", state);
    (row.querySelector(".state") as HTMLElement).style.color = n.bus_cut ? STATE_COLOURS.cut : STATE_COLOURS[n.state];
    row.dataset.state = n.state;
    row.dataset.busCut = String(n.bus_cut);
    set(row, ".conn", String(n.connections));
    set(row, ".res", String(n.reserved));
    set(row, ".lease", n.lease_left_ms === undefined ? "—" : `${(n.lease_left_ms / 1000).toFixed(1)} s`);
    set(row, ".in", n.in_per_sec.toFixed(0));
    set(row, ".out", n.out_per_sec.toFixed(0));
    set(row, ".devices", String(n.devices));
  }
}

function set(root: ParentNode, sel: string, text: string): void {
  const el = root.querySelector(sel);
  if (el && el.textContent !== text) el.textContent = text;
}

/** What each element was last given: comparing with it is cheap, reading innerHTML is not. */
const markups = new Map<string, string>();
function html(id: string, markup: string): void {
  if (markups.get(id) === markup) return;
  markups.set(id, markup);
  $(id).innerHTML = markup;
}

/** Runs `draw` only when `key` changed since the last call for `id`. */
const drawn = new Map<string, string>();
function redrawIf(id: string, key: string, draw: () => void): void {
  if (drawn.get(id) === key) return;
  drawn.set(id, key);
  draw();
}

function drawHistogram(canvas: HTMLCanvasElement, h: Histogram, colour: string): void {
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  const dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth;
  const H = canvas.clientHeight;
  canvas.width = Math.round(W * dpr);
  canvas.height = Math.round(H * dpr);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  const top = Math.max(1, ...h.buckets.map((b) => b[1]));
  const bw = (W - 8) / Math.max(1, h.buckets.length);
  ctx.font = "10px system-ui";
  h.buckets.forEach(([bound, count], i) => {
    const bh = (count / top) * (H - 26);
    ctx.fillStyle = colour;
    ctx.fillRect(4 + i * bw, H - 16 - bh, Math.max(1, bw - 2), bh);
    if (h.buckets.length <= 16 || i % 2 === 0) {
      ctx.fillStyle = "#57606a";
      const label = bound === null || bound >= 60000 ? "more" : bound >= 1000 ? `${bound / 1000}s` : `${bound}`;
      ctx.fillText(label, 4 + i * bw, H - 4);
    }
  });
}

function renderDom(): void {
  const u = state.last;
  if (!u) return;
  const c = u.checker;
  const verdict = $("verdict");
  verdict.dataset.level = c.verdict;
  set(document, "#verdict", c.headline);
  const b = u.cluster.backends;
  set(document, "#setup", `controller ${u.cluster.controller} · registry ${b.registry} · bus ${b.bus} (${b.routing}) · store ${b.store} · lease ${(u.cluster.lease_ms / 1000).toFixed(1)} s`);
  set(document, "#busy", u.busy ?? "");
  $("routing-routed").setAttribute("aria-pressed", String(b.routing === "routed"));
  $("routing-fanout").setAttribute("aria-pressed", String(b.routing === "fanout"));
  const select = $<HTMLSelectElement>("backends");
  const options = u.cluster.choices
    .map((ch) => `<option value="${esc(ch.name)}" ${ch.available ? "" : "disabled"}>${esc(ch.label)}${ch.available ? "" : ` (${esc(ch.missing ?? "unavailable")})`}</option>`)
    .join("");
  if (select.dataset.options !== options) {
    select.dataset.options = options;
    select.innerHTML = options;
  }
  renderNodes(u);

  const t = u.traffic;
  if (!usersTouched && t.users > 0) {
    $<HTMLInputElement>("users").value = String(t.users);
    $<HTMLInputElement>("devices").value = String(t.devices_per_user);
  }
  if (!slidersTouched) {
    $<HTMLInputElement>("rate").value = String(t.rate);
    $<HTMLInputElement>("rooms").value = String(Math.round(t.room_share * 100));
    $("rate-value").textContent = `${t.rate} msg/s`;
    $("rooms-value").textContent = `${Math.round(t.room_share * 100)}%`;
  }

  const rows: [string, string | number][] = [
    ["sent / acked / refused", `${c.sent} / ${c.acked} / ${c.refused}`],
    ["deliveries expected", c.expected],
    ["delivered", c.delivered],
    ["pending", c.pending],
    [`stale (> ${c.stale_after_ms} ms)`, c.stale],
    ["lost", c.lost],
    ["duplicates", c.duplicates],
    ["out of order", c.out_of_order],
    ["devices live", `${t.live} of ${t.devices} (${t.users} users × ${t.devices_per_user})`],
    ["sending now", `${t.sent_per_sec.toFixed(0)} msg/s of ${t.rate} asked, in ${t.conversations} conversations`],
  ];
  html("checker", rows.map(([k, v]) => `<tr><td>${esc(k)}</td><td data-k="${esc(k.split(" ")[0])}">${esc(String(v))}</td></tr>`).join(""));
  html("violations", c.violations.slice(0, 8).map((v) => `<li>${esc(v.text)}</li>`).join(""));
  html(
    "check-rows",
    c.rows.length
      ? `<tr><th>device</th><th>conv</th><th>got</th><th>stale</th><th>lost</th><th>dup</th><th>order</th></tr>` +
          c.rows
            .slice(0, 8)
            .map((r) => `<tr data-level="${r.level}"><td>${esc(r.device)}${r.sender ? " (sender)" : ""}</td><td>${r.conv}</td><td>${r.delivered}/${r.expected}</td><td>${r.stale}</td><td>${r.lost}</td><td>${r.duplicates}</td><td>${r.out_of_order}</td></tr>`)
            .join("")
      : "",
  );

  set(document, "#latency-figures", `${c.latency.count} deliveries · p50 ${c.latency.p50_ms.toFixed(1)} ms · p99 ${c.latency.p99_ms.toFixed(1)} ms · max ${c.latency.max_ms.toFixed(1)} ms`);
  redrawIf("latency", JSON.stringify(c.latency.buckets), () => drawHistogram($<HTMLCanvasElement>("latency"), c.latency, "#0969da"));
  set(document, "#msgs-per-op", c.msgs_per_op === undefined ? "—" : c.msgs_per_op.toFixed(2));
  set(document, "#msgs-per-op-note", `bus envelopes per message over ${c.ops_sampled} sampled; ${b.routing} on ${u.cluster.nodes.filter((n) => n.state === "live").length} live nodes`);
  set(document, "#failover-figures", `${c.failover.count} · p50 ${c.failover.p50_ms.toFixed(0)} ms · p99 ${c.failover.p99_ms.toFixed(0)} ms · max ${c.failover.max_ms.toFixed(0)} ms`);
  html("failovers", c.failovers.slice(-8).reverse().map((f) => `<li>${esc(f.device)}: ${esc(f.from ?? "?")} → ${esc(f.to ?? "?")} in ${f.ms} ms</li>`).join(""));

  html(
    "assignments",
    state.assignments
      .slice(-8)
      .reverse()
      .map((a) => {
        const others = a.others.map((o) => `${esc(o.node)}: ${o.connections + o.reserved}`).join(", ");
        return `<li>${esc(a.chosen.node)}: ${a.chosen.connections} + ${a.chosen.reserved} reserved${others ? `, chosen over ${others}` : ""}</li>`;
      })
      .join(""),
  );
  const recent = state.assignments.slice(-200);
  const spread = new Map<string, number>();
  for (const a of recent) spread.set(a.chosen.node, (spread.get(a.chosen.node) ?? 0) + 1);
  set(document, "#spread", recent.length ? `last ${recent.length} answers: ${[...spread].sort().map(([n, k]) => `${n} ${k}`).join(" · ")}` : "no login yet");

  const p = u.presence;
  set(document, "#presence", `${p.online} of ${p.users} users online${p.online_names.length ? `: ${p.online_names.slice(0, 20).join(", ")}${p.online_names.length > 20 ? "…" : ""}` : ""}`);
  html("notices", p.notices.slice(-6).reverse().map((n) => `<li>${esc(n.node)} (${esc(n.cause)}): ${n.noticed_after_ms === undefined ? "the registry still lists it…" : `the registry noticed after ${n.noticed_after_ms} ms`}</li>`).join(""));

  html("log", state.log.slice(-40).reverse().map((l) => `<li data-level="${l.level}">${esc(l.text)}</li>`).join(""));

  // Messages and the diagram.
  set(document, "#paths", `deliveries via the bus: ${state.paths.bus} · via the store (gap filled, replayed): ${state.paths.store}${state.skipped ? ` · ${state.skipped} not drawn` : ""}`);
  $("paths").dataset.bus = String(state.paths.bus);
  $("paths").dataset.store = String(state.paths.store);
  const list = state.messages.slice(-30).reverse();
  html("messages", list.map((m) => `<li data-id="${esc(m.id)}" aria-selected="${m.id === selected}" title="${esc(pathSummary(m))}">#${m.seq} ${esc(pathSummary(m))}</li>`).join(""));
  const shown = selected ? state.message(selected) : topology.current() ?? state.messages[state.messages.length - 1];
  redrawIf("timeline", shown ? `${shown.id}:${shown.steps.length}` : "", () => drawTimeline($<HTMLCanvasElement>("timeline"), shown));

  const n = state.narration;
  $("narration").hidden = !n;
  if (n) {
    set(document, "#narration-title", n.title);
    html("narration-steps", n.steps.map((s, i) => `<li ${i === n.current ? 'aria-current="step"' : ""}>${esc(s)}</li>`).join(""));
    set(document, "#narration-text", n.text);
  }
}

// ---- the loop

function loop(now: number): void {
  topology.frame(now);
  if (state.version !== domVersion && now - lastDom > 250) {
    domVersion = state.version;
    lastDom = now;
    renderDom();
  }
  requestAnimationFrame(loop);
}
requestAnimationFrame(loop);

const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/stream`;
connect(
  wsUrl,
  (u) => state.apply(u),
  (ok, note) => {
    const el = $("conn");
    el.textContent = note;
    el.dataset.ok = String(ok);
  },
);

mountLessons($("lessons-bar"));

// For tests and curious teachers: the panel's state in the console.
(window as unknown as { lab: LabState }).lab = state;
