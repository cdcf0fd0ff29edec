// The types that cross the Tauri bridge, mirroring the Rust side: the wire types of the
// `protocol` crate, the client core's events (`client::events`), and the app's own
// (`src-tauri/src/events.rs`, `backend.rs`, `commands.rs`). Message ids are decimal strings
// (64-bit Snowflakes must not be rounded by JavaScript); user and conversation ids are numbers.

export type UserId = number;
export type ConvId = number;
export type Seq = number;
export type MessageId = string;
export type Millis = number;

export interface UserInfo {
  id: UserId;
  username: string;
}

export type MessageKind = "text" | "image" | "file" | "voice" | "video";

export interface Attachment {
  id: string;
  name: string;
  mime: string;
  size: number;
  conv: ConvId;
}

/** One emoji's reactions to a message: who gave it, in order. */
export interface Reactions {
  emoji: string;
  users: UserId[];
}

export interface MessageBody {
  type: "message";
  kind: MessageKind;
  text: string;
  attachment?: Attachment;
  reply_to?: MessageId;
  edited_at?: Millis;
  deleted?: boolean;
  /** In history pages: its reactions now. */
  reactions?: Reactions[];
}

export type MemberAction = "created" | "joined" | "invited" | "left";

export type EventBody =
  | MessageBody
  | { type: "edit"; target: MessageId; text: string }
  | { type: "delete"; target: MessageId }
  | { type: "reaction"; target: MessageId; emoji: string; on: boolean }
  | { type: "member"; action: MemberAction; user: UserId };

export interface ChatEvent {
  conv: ConvId;
  seq: Seq;
  id: MessageId;
  at: Millis;
  sender: UserId;
  device?: string;
  client_id?: string;
  /** The node (or controller) that accepted and stored it. */
  origin?: string;
  body: EventBody;
}

export interface ConversationSummary {
  id: ConvId;
  kind: "direct" | "room";
  name: string;
  peer?: UserInfo;
  public: boolean;
  member_count: number;
  last_seq: Seq;
  last_message?: ChatEvent;
  read_seq: Seq;
  unread: number;
  peer_read_seq?: Seq;
  created_at: Millis;
}

export interface PresenceState {
  user: UserId;
  online: boolean;
}

export interface MemberInfo {
  user: UserInfo;
  read_seq: Seq;
  online: boolean;
  joined_seq: Seq;
}

export interface Ack {
  client_id: string;
  conv: ConvId;
  seq: Seq;
  id: MessageId;
  at: Millis;
  duplicate?: boolean;
}

export interface Welcome {
  v: number;
  node: string;
  user: UserInfo;
  device: string;
  conversations: ConversationSummary[];
  presence: PresenceState[];
  server_time: Millis;
}

/** What ended a session (`client::Disconnect`). */
export type Disconnect =
  | { kind: "controller"; message: string }
  | { kind: "no_node" }
  | { kind: "connect_failed"; node: string; message: string }
  | { kind: "rejected"; node: string; status: number; code?: string; message: string }
  | { kind: "unauthorized"; message: string }
  | { kind: "revoked" }
  | { kind: "moving"; node: string; reason: string }
  | { kind: "closed"; node: string; code: number; reason: string }
  | { kind: "lost"; node: string; message: string }
  | { kind: "timeout"; node: string; waiting_for: string }
  | { kind: "gap"; conv: ConvId; message: string }
  | { kind: "shutdown" };

export type StopReason =
  | { kind: "shutdown" }
  | { kind: "unauthorized"; message: string }
  | { kind: "revoked" }
  | { kind: "protocol"; message: string };

/** The connection engine's status (`client::Status`). */
export type Status =
  | { status: "connecting" }
  | { status: "resyncing"; node: string }
  | { status: "live"; node: string }
  | { status: "reconnecting"; attempt: number; in_ms: number; reason: Disconnect }
  | { status: "stopped"; reason: StopReason };

export type ServerChoice = { mode: "local" } | { mode: "remote"; url: string };

export type ServerState =
  | { phase: "unset" }
  | { phase: "starting"; choice: ServerChoice }
  | { phase: "ready"; choice: ServerChoice; url: string }
  | { phase: "failed"; choice: ServerChoice; message: string };

/** The client core's events (`client::ClientEvent`). */
export type ClientEvent =
  | ({ type: "status" } & Status)
  | ({ type: "welcome" } & Welcome)
  | ({ type: "event" } & ChatEvent)
  | ({ type: "acked" } & Ack)
  | { type: "send_failed"; client_id: string; code: string; message: string }
  | { type: "server_error"; code: string; message: string }
  | { type: "presence"; user: UserId; online: boolean }
  | { type: "typing"; conv: ConvId; user: UserId; active: boolean }
  | { type: "read"; conv: ConvId; user: UserId; seq: Seq }
  | { type: "moving"; node: string; reason: string };

/** The app's own events (`AppEvent`). */
export type AppEvent =
  | { type: "server"; state: ServerState }
  | { type: "conversation"; summary: ConversationSummary }
  | { type: "removed"; conv: ConvId }
  | { type: "members"; conv: ConvId; members: MemberInfo[] }
  | { type: "signed_out"; reason: string };

/** One item of a window's event stream. */
export type UiEvent = ClientEvent | AppEvent;

export interface SessionView {
  user: UserInfo;
  device: string;
  device_name: string;
}

export interface Boot {
  label: string;
  main: boolean;
  server: ServerState;
  session: SessionView | null;
  suggested_device_name: string;
  suggested_username: string | null;
}

export interface SendMessage {
  conv: ConvId;
  client_id: string;
  kind?: MessageKind;
  text: string;
  attachment?: string;
  reply_to?: MessageId;
}

export type Outgoing =
  | ({ type: "send" } & SendMessage)
  | { type: "edit"; conv: ConvId; client_id: string; target: MessageId; text: string }
  | { type: "delete"; conv: ConvId; client_id: string; target: MessageId }
  | { type: "react"; conv: ConvId; client_id: string; target: MessageId; emoji: string; on: boolean };

export interface OutboxItem {
  op: Outgoing;
  queued_at: Millis;
}

export interface Snapshot {
  session: SessionView;
  status: Status;
  conversations: ConversationSummary[];
  users: UserInfo[];
  presence: PresenceState[];
  pending: OutboxItem[];
}

export interface HistoryView {
  events: ChatEvent[];
  has_more: boolean;
  offline: boolean;
}

/** A message found by a search; `snippet` marks each match with \u0002 … \u0003. */
export interface SearchHit {
  event: ChatEvent;
  snippet: string;
}

export interface DeviceInfo {
  id: string;
  name: string;
  created_at: Millis;
  last_login: Millis;
  state: "active" | "revoked";
  current: boolean;
}

/** Where a device's connection is (`src-tauri/src/device.rs`, `Link`). */
export interface Link {
  online: boolean;
  node: string | null;
  last_seen: Millis | null;
}

/** One of my devices, with its connection when it runs in a window of this app. */
export interface DeviceView extends DeviceInfo {
  window: string | null;
  link: Link | null;
}

/** When one of my devices in this app got a message, and through which node. */
export interface Receipt {
  window: string;
  device: string;
  device_name: string;
  at: Millis | null;
  node: string | null;
}

/** A message as a tester looks at it (`message_info`). */
export interface MessageInfo {
  event: ChatEvent | null;
  receipts: Receipt[];
}

export interface RoomListing {
  id: ConvId;
  name: string;
  member_count: number;
}

export interface ServerInfo {
  version: string;
  protocol: number;
  max_attachment_bytes: number;
  attachment_types: string[];
  max_text_bytes: number;
  max_frame_bytes: number;
}

export interface NodeView {
  id: string;
  slot: string | null;
  state: string;
  connections: number;
  pid: number | null;
  exit: string | null;
}

export interface ClusterView {
  local: boolean;
  controller: string;
  nodes: NodeView[];
}

/** How every command fails (`src-tauri/src/error.rs`). */
export interface AppError {
  kind: string;
  message: string;
}
