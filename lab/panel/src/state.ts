// What the panel holds: the last frame, merged with what earlier frames brought (sampled
// messages, assignments, log lines, devices). Frames are merged as they arrive, which is
// cheap; drawing happens on animation frames, so a burst of frames never queues up work.

import type {
  AssignmentView, DevicesView, LogEntry, MessageView, Narration, Update,
} from "./types";

const MESSAGES_KEPT = 200;
const ASSIGNMENTS_KEPT = 400;
const LOG_KEPT = 300;

/** Where a message reached devices from: the bus, or the store (gap filled, replayed). */
export interface PathCounts { bus: number; store: number }

export class LabState {
  last?: Update;
  run = "";
  devices: DevicesView = { users: [], devices: [] };
  /** Sampled messages, oldest first. */
  messages: MessageView[] = [];
  assignments: AssignmentView[] = [];
  log: LogEntry[] = [];
  narration?: Narration;
  skipped = 0;
  /** Bumped by every frame; views compare it to know whether to redraw. */
  version = 0;
  /** Bumped when the devices changed. */
  devicesVersion = 0;
  /** Ids of messages that arrived since the topology last took one to animate. */
  fresh: string[] = [];
  /** Delivery steps of sampled messages by where they came from, since the run started. */
  paths: PathCounts = { bus: 0, store: 0 };
  private counted = new Map<string, [number, number]>();

  apply(u: Update): void {
    if (u.full || u.run !== this.run) {
      this.run = u.run;
      this.messages = [];
      this.assignments = [];
      this.log = [];
      this.fresh = [];
      this.paths = { bus: 0, store: 0 };
      this.counted.clear();
      this.skipped = 0;
    }
    this.last = u;
    if (u.devices) {
      this.devices = u.devices;
      this.devicesVersion++;
    }
    if (u.narration) this.narration = u.narration.title ? u.narration : undefined;
    for (const m of u.messages ?? []) this.mergeMessage(m);
    if (u.assignments?.length) {
      this.assignments.push(...u.assignments);
      this.assignments.splice(0, Math.max(0, this.assignments.length - ASSIGNMENTS_KEPT));
    }
    if (u.log?.length) {
      this.log.push(...u.log);
      this.log.splice(0, Math.max(0, this.log.length - LOG_KEPT));
    }
    this.skipped += u.skipped_messages;
    this.version++;
  }

  private mergeMessage(m: MessageView): void {
    const i = this.messages.findIndex((x) => x.id === m.id);
    if (i >= 0) this.messages.splice(i, 1);
    this.messages.push(m);
    this.messages.splice(0, Math.max(0, this.messages.length - MESSAGES_KEPT));
    if (!this.fresh.includes(m.id)) this.fresh.push(m.id);
    if (this.fresh.length > 20) this.fresh.splice(0, this.fresh.length - 20);
    // Count each message's delivery sources once: what is new since it was last merged.
    let bus = 0;
    let store = 0;
    for (const s of m.steps) {
      if (s.what === "received") bus++;
      if (s.what === "gap_filled" || s.what === "replayed") store++;
    }
    const [b0, s0] = this.counted.get(m.id) ?? [0, 0];
    this.paths.bus += Math.max(0, bus - b0);
    this.paths.store += Math.max(0, store - s0);
    this.counted.set(m.id, [Math.max(bus, b0), Math.max(store, s0)]);
    if (this.counted.size > 2000) this.counted.clear();
  }

  message(id: string): MessageView | undefined {
    return this.messages.find((m) => m.id === id);
  }
}

/** Keeps one WebSocket to the lab open, reconnecting (the lab may restart) with backoff. */
export function connect(
  url: string,
  onFrame: (u: Update) => void,
  onStatus: (connected: boolean, note: string) => void,
): void {
  let delay = 250;
  const open = () => {
    const ws = new WebSocket(url);
    ws.onopen = () => {
      delay = 250;
      onStatus(true, "live");
    };
    ws.onmessage = (ev) => {
      try {
        onFrame(JSON.parse(ev.data as string) as Update);
      } catch (e) {
        console.error("a frame the panel could not read", e);
      }
    };
    ws.onclose = () => {
      onStatus(false, `lab unreachable: reconnecting in ${(delay / 1000).toFixed(1)} s…`);
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 4000);
    };
  };
  open();
}
