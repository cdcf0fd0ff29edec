// One message's Lamport-style diagram: a lane per process (the sending device, the nodes,
// the store, the bus, the receiving devices), a dot per step in time order, an arrow from
// each step to the one it caused, and each step's offset in microseconds from the send.

import type { MessageView, Step } from "./types";

const LABELS: Record<string, string> = {
  sent: "sent", persisted: "persisted", acked: "acked", published: "published",
  received: "received", returned: "returned", delivered: "delivered", gap_filled: "gap filled",
  replayed: "replayed", recovered: "recovered", ack_seen: "ack seen", shown: "shown",
};

const MAX_DEVICE_LANES = 8;

function lane(s: Step): string {
  if (s.device && (s.what === "sent" || s.what === "shown" || s.what === "ack_seen")) return `device ${s.device}`;
  return s.node ? `node ${s.node}` : "?";
}

/** The step that caused `s`, among the steps before it. */
function cause(s: Step, before: Step[]): Step | undefined {
  const last = (p: (x: Step) => boolean) => [...before].reverse().find(p);
  switch (s.what) {
    case "persisted":
      return last((x) => x.what === "sent");
    case "acked":
    case "published":
      return last((x) => x.what === "persisted" && x.node === s.node);
    case "received":
    case "returned":
      return last((x) => (x.what === "published" || x.what === "recovered") && (x.peers ?? []).includes(s.node ?? ""))
        ?? last((x) => x.what === "published");
    case "delivered":
      return last((x) => x.node === s.node && ["received", "persisted", "gap_filled", "replayed", "returned"].includes(x.what));
    case "shown":
      return last((x) => x.what === "delivered" && x.device === s.device);
    case "ack_seen":
      return last((x) => x.what === "acked");
    default:
      return undefined;
  }
}

export function drawTimeline(canvas: HTMLCanvasElement, m: MessageView | undefined): void {
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  const dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth;
  const H = canvas.clientHeight;
  canvas.width = Math.round(W * dpr);
  canvas.height = Math.round(H * dpr);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  ctx.font = "11px system-ui";
  if (!m) {
    ctx.fillStyle = "#57606a";
    ctx.fillText("no sampled message yet: start virtual users and traffic", 8, 20);
    return;
  }
  const steps = [...m.steps].sort((a, b) => a.at_us - b.at_us);
  const t0 = steps[0]?.at_us ?? 0;
  // Lanes: devices that sent, nodes, store/bus pseudo-lanes, devices that showed it.
  const lanes: string[] = [];
  const add = (l: string) => { if (!lanes.includes(l)) lanes.push(l); };
  for (const s of steps) if (s.what === "sent") add(lane(s));
  for (const s of steps) if (!lane(s).startsWith("device")) add(lane(s));
  add("store");
  let devices = 0;
  for (const s of steps) {
    const l = lane(s);
    if (l.startsWith("device") && !lanes.includes(l) && devices < MAX_DEVICE_LANES) {
      add(l);
      devices++;
    }
  }
  const left = 110;
  const laneH = Math.max(22, Math.min(44, (H - 40) / Math.max(1, lanes.length)));
  const y = (l: string) => 24 + lanes.indexOf(l) * laneH;
  ctx.strokeStyle = "#d0d7de";
  ctx.fillStyle = "#24292f";
  for (const l of lanes) {
    ctx.beginPath();
    ctx.moveTo(left, y(l));
    ctx.lineTo(W - 8, y(l));
    ctx.stroke();
    ctx.fillText(l, 4, y(l) + 4, left - 8);
  }
  // Steps in time order, evenly spaced (the order is the point), labelled with their offset.
  const dx = (W - left - 90) / Math.max(1, steps.length - 1);
  const pos = new Map<Step, { x: number; y: number }>();
  steps.forEach((s, i) => {
    const l = lane(s);
    if (!lanes.includes(l)) return;
    pos.set(s, { x: left + 6 + i * dx, y: y(l) });
  });
  steps.forEach((s, i) => {
    const p = pos.get(s);
    if (!p) return;
    const from = cause(s, steps.slice(0, i));
    const fp = from ? pos.get(from) : undefined;
    const colour = s.what === "gap_filled" || s.what === "replayed" ? "#bf8700" : s.what === "received" || s.what === "published" ? "#8250df" : "#1a7f37";
    if (s.what === "persisted" || s.what === "gap_filled" || s.what === "replayed") {
      // The store's part: a tick on its lane.
      ctx.strokeStyle = "#0a3069";
      ctx.setLineDash([2, 3]);
      ctx.beginPath();
      ctx.moveTo(p.x, p.y);
      ctx.lineTo(p.x, y("store"));
      ctx.stroke();
      ctx.setLineDash([]);
    }
    if (fp) arrow(ctx, fp, p, colour);
    ctx.fillStyle = colour;
    ctx.beginPath();
    ctx.arc(p.x, p.y, 3.5, 0, Math.PI * 2);
    ctx.fill();
    // Labels alternate above and below their lane so that neighbours do not overlap.
    ctx.fillStyle = "#24292f";
    ctx.fillText(LABELS[s.what] ?? s.what, p.x + 4, i % 2 ? p.y + 13 : p.y - 5);
    ctx.fillStyle = "#57606a";
    ctx.fillText(`+${s.at_us - t0}µs`, p.x + 4, i % 2 ? p.y + 24 : p.y - 16);
  });
}

function arrow(ctx: CanvasRenderingContext2D, a: { x: number; y: number }, b: { x: number; y: number }, colour: string): void {
  ctx.strokeStyle = colour;
  ctx.fillStyle = colour;
  ctx.lineWidth = 1.3;
  ctx.beginPath();
  ctx.moveTo(a.x, a.y);
  ctx.lineTo(b.x, b.y);
  ctx.stroke();
  const angle = Math.atan2(b.y - a.y, b.x - a.x);
  ctx.beginPath();
  ctx.moveTo(b.x, b.y);
  ctx.lineTo(b.x - 7 * Math.cos(angle - 0.4), b.y - 7 * Math.sin(angle - 0.4));
  ctx.lineTo(b.x - 7 * Math.cos(angle + 0.4), b.y - 7 * Math.sin(angle + 0.4));
  ctx.fill();
}

/** One line saying where a message went: for the list beside the diagram. */
export function pathSummary(m: MessageView): string {
  const shown = m.steps.filter((s) => s.what === "shown").length;
  const viaBus = m.steps.filter((s) => s.what === "received").map((s) => s.node);
  const viaStore = m.steps.filter((s) => s.what === "gap_filled" || s.what === "replayed").map((s) => s.node);
  const parts = [`${m.origin ?? "?"} → store seq ${m.seq}`];
  if (viaBus.length) parts.push(`bus → ${[...new Set(viaBus)].join(", ")}`);
  if (viaStore.length) parts.push(`store → ${[...new Set(viaStore)].join(", ")} (gap filled)`);
  parts.push(`${shown} device${shown === 1 ? "" : "s"}`);
  return parts.join(" · ");
}
