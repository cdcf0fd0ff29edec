// The live topology, on one canvas: the controller and its registry, the store, the bus, a
// box per node (state, connections, reservations, lease, rates) with a dot per device
// coloured by user, and the newest sampled message's path animated hop by hop. Device dots
// glide to their new node when they fail over. A canvas draws 2,000 dots in well under a
// millisecond; nothing here touches the DOM.

import type { LabState } from "./state";
import type { MessageView, NodeState, NodeView, Step } from "./types";

interface Box { x: number; y: number; w: number; h: number }
interface Pt { x: number; y: number }

export const STATE_COLOURS: Record<NodeState | "cut", string> = {
  starting: "#9a6700",
  live: "#1a7f37",
  draining: "#bc4c00",
  frozen: "#0969da",
  dead: "#cf222e",
  stopped: "#6e7781",
  cut: "#8250df",
};

export function userColour(user: number): string {
  return `hsl(${(user * 137.508) % 360} 65% 48%)`;
}

/** The tallest the canvas grows, in CSS pixels. */
const MAX_HEIGHT = 640;
/** How long one message's path takes to play. */
const PLAY_MS = 1600;
/** How long a device takes to glide to its new node. */
const GLIDE_MS = 700;

interface Glide { from: Pt; to: Pt; start: number }

export class Topology {
  private ctx: CanvasRenderingContext2D;
  private boxes = new Map<string, Box>();
  private controller: Box = { x: 0, y: 0, w: 0, h: 0 };
  private store: Box = { x: 0, y: 0, w: 0, h: 0 };
  private bus: Box = { x: 0, y: 0, w: 0, h: 0 };
  private limbo: Box = { x: 0, y: 0, w: 0, h: 0 };
  /** Where each device's dot is drawn now, and where it is headed. */
  private dots = new Map<string, Pt>();
  private glides = new Map<string, Glide>();
  private dotSize = 6;
  private playing?: { msg: MessageView; start: number };
  /** The message the user clicked: played again and again until released. */
  frozen?: string;
  private drawnVersion = -1;
  private placedDevices = -1;
  private placedBoxes = "";
  private boxesKey = "";
  /** The boxes and dots, redrawn only when they change. */
  private layer = document.createElement("canvas");
  private lctx: CanvasRenderingContext2D;
  private colours: string[] = [];

  constructor(private canvas: HTMLCanvasElement, private state: LabState) {
    const ctx = canvas.getContext("2d");
    const lctx = this.layer.getContext("2d");
    if (!ctx || !lctx) throw new Error("no 2D canvas");
    this.ctx = ctx;
    this.lctx = lctx;
  }

  private colour(user: number): string {
    return (this.colours[user] ??= userColour(user));
  }

  /** Draws if anything changed or moves; called on every animation frame. The boxes and the
   *  dots are drawn on a layer of their own only when a lab frame arrived (a few times a
   *  second) or dots glide; an animation frame only copies that layer and draws the path. */
  frame(now: number): void {
    const resized = this.resize();
    let dirty = resized;
    if (resized || this.drawnVersion !== this.state.version) {
      this.drawnVersion = this.state.version;
      this.layout();
      if (resized || this.placedDevices !== this.state.devicesVersion || this.boxesKey !== this.placedBoxes) {
        this.placedDevices = this.state.devicesVersion;
        this.placedBoxes = this.boxesKey;
        this.placeDevices(now);
      }
      dirty = true;
    }
    if (this.glides.size) {
      this.stepGlides(now);
      dirty = true;
    }
    if (dirty) this.drawStatic();
    const wasPlaying = this.playing !== undefined;
    this.pickMessage(now);
    if (!dirty && !this.playing && !wasPlaying) return;
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.drawImage(this.layer, 0, 0);
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    if (this.playing) this.path(this.playing.msg, (now - this.playing.start) / PLAY_MS);
  }

  /** Fits the canvas and its layer to the element; says whether the size changed. */
  private resize(): boolean {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(this.canvas.clientWidth * dpr);
    const h = Math.round(this.canvas.clientHeight * dpr);
    if (this.canvas.width === w && this.canvas.height === h && this.layer.width === w) return false;
    this.canvas.width = w;
    this.canvas.height = h;
    this.layer.width = w;
    this.layer.height = h;
    return true;
  }

  private layout(): void {
    const W = this.canvas.clientWidth;
    const H = this.canvas.clientHeight;
    const nodes = this.state.last?.cluster.nodes ?? [];
    this.controller = { x: 16, y: 12, w: Math.min(300, W * 0.4), h: 62 };
    this.store = { x: W - Math.min(240, W * 0.32) - 16, y: 12, w: Math.min(240, W * 0.32), h: 62 };
    this.limbo = { x: this.controller.x + this.controller.w + 16, y: 12, w: this.store.x - this.controller.x - this.controller.w - 32, h: 62 };
    this.bus = { x: 16, y: 98, w: W - 32, h: 26 };
    const rows = nodes.length > 6 ? 2 : 1;
    const perRow = Math.max(1, Math.ceil(nodes.length / rows));
    const gap = 12;
    const top = this.bus.y + this.bus.h + 26;
    const bw = (W - 32 - gap * (perRow - 1)) / perRow;
    // Dots as big as the fullest node allows at the canvas's tallest; boxes as tall as their
    // dots need; the canvas as tall as its boxes.
    const counts = new Map<string, number>();
    for (const d of this.state.devices.devices) if (d[1]) counts.set(d[1], (counts.get(d[1]) ?? 0) + 1);
    const most = Math.max(1, ...counts.values());
    const bhMax = (MAX_HEIGHT - top - 12 - gap * (rows - 1)) / rows;
    const areaMax = Math.max(1, (bw - 12) * (bhMax - 64));
    this.dotSize = Math.max(2, Math.min(10, Math.floor(Math.sqrt(areaMax / most)) - 1));
    const cell = this.dotSize + 1;
    const cols = Math.max(1, Math.floor((bw - 12) / cell));
    const bh = Math.max(96, Math.min(bhMax, 64 + Math.ceil(most / cols) * cell + 6));
    const height = Math.round(top + rows * bh + gap * (rows - 1) + 12);
    if (Math.abs(H - height) > 1) this.canvas.style.height = `${height}px`;
    this.boxes.clear();
    this.boxesKey = `${W}x${height}:${nodes.map((n) => n.slot).join(",")}`;
    nodes.forEach((n, i) => {
      const r = Math.floor(i / perRow);
      const c = i % perRow;
      this.boxes.set(n.slot, { x: 16 + c * (bw + gap), y: top + r * (bh + gap), w: bw, h: bh });
    });
  }

  /** Each device's target point; a device that changed node glides there. */
  private placeDevices(now: number): void {
    const perNode = new Map<string, number>();
    let limboIndex = 0;
    const cell = this.dotSize + 1;
    const seen = new Set<string>();
    for (const [, node, state, id] of this.state.devices.devices) {
      seen.add(id);
      let target: Pt;
      const box = node && state !== "reconnecting" ? this.boxes.get(node) : undefined;
      if (box) {
        const i = perNode.get(node!) ?? 0;
        perNode.set(node!, i + 1);
        const cols = Math.max(1, Math.floor((box.w - 12) / cell));
        target = { x: box.x + 6 + (i % cols) * cell, y: box.y + 58 + Math.floor(i / cols) * cell };
      } else {
        const cols = Math.max(1, Math.floor((this.limbo.w - 8) / 4));
        const i = limboIndex++;
        target = { x: this.limbo.x + 4 + (i % cols) * 4, y: this.limbo.y + 22 + Math.floor(i / cols) * 4 % 36 };
      }
      const at = this.dots.get(id);
      const glide = this.glides.get(id);
      const headed = glide ? glide.to : at;
      if (!at) {
        this.dots.set(id, target);
      } else if (headed && (Math.abs(headed.x - target.x) > 0.5 || Math.abs(headed.y - target.y) > 0.5)) {
        // A move across nodes glides; a reshuffle inside a box jumps.
        const far = Math.abs(headed.x - target.x) > 40 || Math.abs(headed.y - target.y) > 40;
        if (far) this.glides.set(id, { from: { ...at }, to: target, start: now });
        else {
          this.dots.set(id, target);
          this.glides.delete(id);
        }
      }
    }
    if (this.dots.size > seen.size) for (const id of this.dots.keys()) if (!seen.has(id)) this.dots.delete(id);
  }

  private stepGlides(now: number): void {
    for (const [id, g] of this.glides) {
      const t = Math.min(1, (now - g.start) / GLIDE_MS);
      const e = t < 0.5 ? 2 * t * t : 1 - (-2 * t + 2) ** 2 / 2;
      this.dots.set(id, { x: g.from.x + (g.to.x - g.from.x) * e, y: g.from.y + (g.to.y - g.from.y) * e });
      if (t >= 1) this.glides.delete(id);
    }
  }

  private pickMessage(now: number): void {
    if (this.playing && now - this.playing.start < PLAY_MS + 400) return;
    if (this.frozen) {
      const m = this.state.message(this.frozen);
      this.playing = m ? { msg: m, start: now } : undefined;
      return;
    }
    // The newest fresh message that has more than its first step.
    while (this.state.fresh.length) {
      const id = this.state.fresh.pop()!;
      this.state.fresh.length = 0;
      const m = this.state.message(id);
      if (m && m.steps.length > 2) {
        this.playing = { msg: m, start: now };
        return;
      }
    }
    this.playing = undefined;
  }

  /** The message being drawn now. */
  current(): MessageView | undefined {
    return this.playing?.msg;
  }

  /** The boxes, the bus and the dots, on the layer. */
  private drawStatic(): void {
    const ctx = this.lctx;
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const W = this.canvas.clientWidth;
    const H = this.canvas.clientHeight;
    ctx.clearRect(0, 0, W, H);
    const u = this.state.last;
    if (!u) {
      ctx.fillStyle = "#57606a";
      ctx.font = "16px system-ui";
      ctx.fillText("waiting for the lab…", 20, 40);
      return;
    }
    const b = u.cluster.backends;
    this.service(this.controller, "controller + registry", `${b.registry} registry · ${u.cluster.nodes.filter((n) => n.registered).length} listed`, "#24292f");
    this.service(this.store, "store", `${b.store}`, "#0a3069");
    ctx.fillStyle = "#57606a";
    ctx.font = "11px system-ui";
    ctx.fillText("not connected (logging in, reconnecting)", this.limbo.x, this.limbo.y + 12);
    // The bus.
    ctx.fillStyle = b.routing === "fanout" ? "#fff8c5" : "#ddf4ff";
    ctx.strokeStyle = "#8c959f";
    roundRect(ctx, this.bus, 6);
    ctx.fill();
    ctx.stroke();
    ctx.fillStyle = "#24292f";
    ctx.font = "600 13px system-ui";
    ctx.fillText(`bus: ${b.bus} · ${b.routing}${b.routing === "fanout" ? " (every envelope to every node)" : " (only to nodes holding a recipient)"}`, this.bus.x + 10, this.bus.y + 17);
    for (const n of u.cluster.nodes) this.node(n, u.now_us);
    // Devices, batched by colour.
    const byColour = new Map<string, Pt[]>();
    for (const [user, , state, id] of this.state.devices.devices) {
      const p = this.dots.get(id);
      if (!p) continue;
      const c = state === "live" ? this.colour(user) : state === "resyncing" ? "#bf8700" : "#8c959f";
      let list = byColour.get(c);
      if (!list) byColour.set(c, (list = []));
      list.push(p);
    }
    const s = this.dotSize;
    for (const [c, pts] of byColour) {
      ctx.fillStyle = c;
      for (const p of pts) ctx.fillRect(p.x, p.y, s, s);
    }
  }

  private service(box: Box, title: string, detail: string, colour: string): void {
    const ctx = this.lctx;
    ctx.fillStyle = "#f6f8fa";
    ctx.strokeStyle = colour;
    ctx.lineWidth = 1.5;
    roundRect(ctx, box, 8);
    ctx.fill();
    ctx.stroke();
    ctx.fillStyle = colour;
    ctx.font = "600 14px system-ui";
    ctx.fillText(title, box.x + 10, box.y + 22);
    ctx.font = "12px system-ui";
    ctx.fillStyle = "#57606a";
    ctx.fillText(detail, box.x + 10, box.y + 42);
  }

  private node(n: NodeView, nowUs: number): void {
    const box = this.boxes.get(n.slot);
    if (!box) return;
    const ctx = this.lctx;
    const colour = n.bus_cut ? STATE_COLOURS.cut : STATE_COLOURS[n.state];
    ctx.fillStyle = n.state === "dead" || n.state === "stopped" ? "#fff5f5" : "#ffffff";
    ctx.strokeStyle = colour;
    ctx.lineWidth = n.state === "live" && !n.bus_cut ? 1.5 : 3;
    ctx.setLineDash(n.state === "frozen" ? [6, 4] : []);
    roundRect(ctx, box, 8);
    ctx.fill();
    ctx.stroke();
    ctx.setLineDash([]);
    // Its link to the bus.
    ctx.strokeStyle = n.bus_cut ? STATE_COLOURS.cut : "#8c959f";
    ctx.setLineDash(n.bus_cut ? [3, 5] : []);
    ctx.beginPath();
    ctx.moveTo(box.x + box.w / 2, box.y);
    ctx.lineTo(box.x + box.w / 2, this.bus.y + this.bus.h);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = colour;
    ctx.font = "600 14px system-ui";
    const label = n.bus_cut ? `${n.state}, bus cut` : n.state;
    ctx.fillText(`${n.id}  ${label}`, box.x + 8, box.y + 18, box.w - 16);
    ctx.fillStyle = "#24292f";
    ctx.font = "11px system-ui";
    const lease = n.lease_left_ms === undefined ? "no lease" : `lease ${(n.lease_left_ms / 1000).toFixed(1)} s`;
    ctx.fillText(`${n.connections} conn + ${n.reserved} res · ${lease}`, box.x + 8, box.y + 34, box.w - 16);
    ctx.fillText(`in ${n.in_per_sec.toFixed(0)}/s · out ${n.out_per_sec.toFixed(0)}/s · ${n.devices} dev`, box.x + 8, box.y + 48, box.w - 16);
    void nowUs;
  }

  private anchor(step: Step): Pt | undefined {
    if (step.device && (step.what === "sent" || step.what === "shown" || step.what === "ack_seen")) {
      return this.dotCentre(step.device);
    }
    const box = step.node ? this.boxes.get(step.node) : undefined;
    return box ? { x: box.x + box.w / 2, y: box.y + 26 } : undefined;
  }

  private dotCentre(device: string): Pt | undefined {
    const p = this.dots.get(device);
    return p ? { x: p.x + this.dotSize / 2, y: p.y + this.dotSize / 2 } : undefined;
  }

  private busPoint(slot: string | undefined): Pt {
    const box = slot ? this.boxes.get(slot) : undefined;
    return { x: box ? box.x + box.w / 2 : this.bus.x + this.bus.w / 2, y: this.bus.y + this.bus.h / 2 };
  }

  /** The hops of one message, drawn up to `t` (0..1 of the play time). */
  private path(m: MessageView, t: number): void {
    const steps = [...m.steps].sort((a, b) => a.at_us - b.at_us);
    const n = steps.length;
    const storePt = { x: this.store.x + this.store.w / 2, y: this.store.y + this.store.h };
    const segments: { from: Pt; to: Pt; colour: string; dashed?: boolean }[][] = [];
    for (const s of steps) {
      const at = this.anchor(s);
      const node = s.node ? this.boxes.get(s.node) : undefined;
      const nodePt = node ? { x: node.x + node.w / 2, y: node.y + 26 } : undefined;
      const dev = s.device ? this.dotCentre(s.device) : undefined;
      const seg: { from: Pt; to: Pt; colour: string; dashed?: boolean }[] = [];
      switch (s.what) {
        case "sent":
          if (dev && m.origin && this.boxes.get(m.origin)) seg.push({ from: dev, to: this.anchor({ ...s, what: "persisted", node: m.origin })!, colour: "#0969da" });
          break;
        case "persisted":
          if (nodePt) seg.push({ from: nodePt, to: storePt, colour: "#0a3069" });
          break;
        case "published":
        case "recovered":
          if (nodePt) {
            const bp = this.busPoint(s.node);
            seg.push({ from: nodePt, to: bp, colour: "#8250df" });
            for (const p of s.peers ?? []) seg.push({ from: bp, to: this.busPoint(p), colour: "#8250df" });
          }
          break;
        case "received":
        case "returned":
          if (nodePt) seg.push({ from: this.busPoint(s.node), to: nodePt, colour: "#8250df" });
          break;
        case "gap_filled":
        case "replayed":
          if (nodePt) seg.push({ from: storePt, to: nodePt, colour: "#bf8700", dashed: true });
          break;
        case "delivered":
          if (nodePt && dev) seg.push({ from: nodePt, to: dev, colour: "#1a7f37" });
          break;
        case "acked":
          if (nodePt && dev) seg.push({ from: nodePt, to: dev, colour: "#57606a", dashed: true });
          break;
        default:
          if (at) seg.push({ from: at, to: at, colour: "#1a7f37" });
      }
      segments.push(seg);
    }
    const ctx = this.ctx;
    const per = 1 / Math.max(1, n);
    segments.forEach((seg, i) => {
      const local = Math.max(0, Math.min(1, (t - i * per * 0.85) / (per * 1.6)));
      if (local <= 0) return;
      for (const s of seg) {
        ctx.strokeStyle = s.colour;
        ctx.lineWidth = 2;
        ctx.setLineDash(s.dashed ? [5, 4] : []);
        const x = s.from.x + (s.to.x - s.from.x) * local;
        const y = s.from.y + (s.to.y - s.from.y) * local;
        ctx.beginPath();
        ctx.moveTo(s.from.x, s.from.y);
        ctx.lineTo(x, y);
        ctx.stroke();
        ctx.setLineDash([]);
        ctx.fillStyle = s.colour;
        ctx.beginPath();
        ctx.arc(x, y, local < 1 ? 5 : 3, 0, Math.PI * 2);
        ctx.fill();
      }
    });
    ctx.fillStyle = "#24292f";
    ctx.font = "12px system-ui";
    ctx.fillText(`message ${m.id} · seq ${m.seq} · ${m.kind || "?"}${this.frozen ? " · frozen (click it in the timeline list to release)" : ""}`, this.bus.x + 8, this.bus.y + this.bus.h + 16);
  }
}

function roundRect(ctx: CanvasRenderingContext2D, b: Box, r: number): void {
  ctx.beginPath();
  ctx.roundRect(b.x, b.y, b.w, b.h, r);
}
