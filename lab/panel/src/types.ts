// The wire of the lab panel, as `protocol::lab` (Rust) defines it: what `/api/stream` sends
// and what `/api/op` takes. Kept by hand beside the Rust; `docs/protocol.md` is the contract.

export type Level = "ok" | "warn" | "bad";
export type NodeState = "starting" | "live" | "draining" | "frozen" | "dead" | "stopped";
export type DeviceState = "connecting" | "resyncing" | "live" | "reconnecting" | "stopped";
export type StepKind =
  | "sent" | "persisted" | "acked" | "published" | "received" | "returned" | "delivered"
  | "gap_filled" | "replayed" | "recovered" | "ack_seen" | "shown";

export interface NodeLoad { node: string; connections: number; reserved: number }

export interface NodeView {
  slot: string; id: string; pid: number; state: NodeState; bus_cut: boolean;
  registered: boolean; connections: number; reserved: number; lease_left_ms?: number;
  in_per_sec: number; out_per_sec: number; devices: number;
}

export interface BackendChoice { name: string; label: string; available: boolean; missing?: string }

export interface ClusterView {
  controller: string;
  backends: { registry: string; bus: string; routing: string; store: string };
  choices: BackendChoice[];
  lease_ms: number;
  nodes: NodeView[];
  registry_error?: string;
  cuttable: boolean;
}

/** `[user, node, state, device id]` */
export type DeviceDot = [number, string | null, DeviceState, string];
export interface DevicesView { users: string[]; devices: DeviceDot[] }

export interface Step { at_us: number; what: StepKind; node?: string; device?: string; peers?: string[] }
export interface MessageView { id: string; conv: number; seq: number; kind?: string; origin?: string; steps: Step[] }
export interface AssignmentView { at_us: number; chosen: NodeLoad; others: NodeLoad[]; excluded?: string[] }
export interface LogEntry { at_us: number; level: Level; text: string }

export interface Histogram { count: number; p50_ms: number; p99_ms: number; max_ms: number; buckets: [number | null, number][] }
export interface Violation {
  kind: "lost" | "duplicate" | "out_of_order"; id?: string; conv: number; seq?: number;
  device: string; user: string; node?: string; at_us: number; text: string;
}
export interface CheckRow {
  device: string; user: string; conv: number; sender: boolean; delivered: number; expected: number;
  stale: number; lost: number; duplicates: number; out_of_order: number; level: Level;
}
export interface Failover { device: string; from?: string; to?: string; at_us: number; ms: number }
export interface CheckerView {
  verdict: Level; headline: string; sent: number; acked: number; refused: number; expected: number;
  delivered: number; pending: number; stale: number; lost: number; duplicates: number;
  out_of_order: number; stale_after_ms: number; violations: Violation[]; rows: CheckRow[];
  latency: Histogram; msgs_per_op?: number; ops_sampled: number; failover: Histogram; failovers: Failover[];
}
export interface TrafficView {
  users: number; devices_per_user: number; devices: number; live: number; rate: number;
  sent_per_sec: number; room_share: number; conversations: number; starting: boolean;
}
export interface Notice { node: string; cause: string; at_us: number; noticed_after_ms?: number }
export interface PresenceView { online: number; users: number; online_names: string[]; notices: Notice[] }
export interface Narration { title: string; steps: string[]; current: number; text: string }

export interface Update {
  now_us: number; run: string; full: boolean; cluster: ClusterView; devices?: DevicesView;
  messages?: MessageView[]; assignments?: AssignmentView[]; log?: LogEntry[];
  checker: CheckerView; traffic: TrafficView; presence: PresenceView; narration?: Narration;
  busy?: string; skipped_messages: number;
}

export type Op =
  | { op: "kill" | "stop" | "freeze" | "thaw" | "restart" | "cut_bus" | "restore_bus"; node: string }
  | { op: "add_node" } | { op: "end_burst" } | { op: "settle" } | { op: "reset_checker" }
  | { op: "set_routing"; routing: string }
  | { op: "set_backends"; name: string }
  | { op: "users"; users: number; devices_per_user: number }
  | { op: "rate"; per_sec: number; room_share?: number }
  | { op: "burst"; logins: number };

export interface OpResult { ok: boolean; message: string }
