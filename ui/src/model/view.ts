// What the screens show, derived from the chat state: the sorted conversation list and its
// previews, the status line, timeline rows with day separators and sender groups, read marks,
// typing lines. Pure functions, unit-tested.

import type { ChatEvent, ConvId, ConversationSummary, Millis, NodeView, Seq, ServerState, Status, UserId, UserInfo } from "../ipc/types";
import type { ChatState, Item } from "./chat";
import { dayLabel, fileSize } from "./format";
import { plainText } from "./markup";

// ---------------------------------------------------------------------------------------------
// Conversation list

export function lastActivity(c: ConversationSummary): Millis {
  return c.last_message?.at ?? c.created_at;
}

/** Most recent activity first. */
export function sortedConversations(s: ChatState): ConversationSummary[] {
  return Object.values(s.convs).sort((a, b) => lastActivity(b) - lastActivity(a) || b.id - a.id);
}

export function userName(s: ChatState, id: UserId): string {
  if (s.me && id === s.me.id) return s.me.username;
  return s.users[id] ?? `user ${id}`;
}

export function title(c: ConversationSummary): string {
  return c.kind === "direct" ? (c.peer?.username ?? c.name) : c.name;
}

/** One line about what a message is: its text, or its attachment. */
export function describeMessage(e: ChatEvent): string {
  const b = e.body;
  if (b.type !== "message") return "";
  if (b.deleted) return "Message deleted";
  const text = plainText(b.text);
  if (b.attachment) {
    const what = b.kind === "image" ? "Photo" : b.kind === "video" ? "Video" : b.kind === "voice" ? "Audio" : `File: ${b.attachment.name}`;
    return text ? `${what} · ${text}` : what;
  }
  return text;
}

/** The second line of a conversation in the list: the last message, or what I am sending. */
export function preview(s: ChatState, c: ConversationSummary): string {
  const items = s.timelines[c.id]?.items ?? [];
  const sending = items[items.length - 1];
  if (sending && sending.seq === null && sending.kind === "message") {
    const what = sending.uploadName ?? sending.text.replace(/\s+/g, " ");
    return sending.state === "failed" ? `Not sent: ${what}` : `Sending: ${what}`;
  }
  const m = c.last_message;
  if (!m) return c.kind === "room" ? `${c.member_count} member${c.member_count === 1 ? "" : "s"}` : "No messages yet";
  const text = describeMessage(m).replace(/\s+/g, " ");
  if (s.me && m.sender === s.me.id) return `You: ${text}`;
  if (c.kind === "room") return `${userName(s, m.sender)}: ${text}`;
  return text;
}

/** Whether the other side of a direct conversation is online: null for rooms, and while this
 * device is not connected (what it knew may no longer be true). */
export function peerOnline(s: ChatState, c: ConversationSummary): boolean | null {
  if (c.kind !== "direct" || !c.peer) return null;
  if (s.status.status !== "live" && s.status.status !== "resyncing") return null;
  return s.online[c.peer.id] ?? false;
}

export function totalUnread(s: ChatState): number {
  return Object.values(s.convs).reduce((n, c) => n + c.unread, 0);
}

// ---------------------------------------------------------------------------------------------
// Status line

export type Tone = "ok" | "busy" | "warn" | "bad";

export interface StatusLine {
  tone: Tone;
  /** `live`, `resyncing`, `connecting`, `reconnecting`, `offline`, `starting`. */
  state: string;
  node: string | null;
  /** The state and the node, or what went wrong: "Connected · node n2", "Reconnecting · lost n2". */
  text: string;
  /** The rest: when the next attempt is, how many messages wait. Empty when nothing to add. */
  detail: string;
}

function reasonText(r: Extract<Status, { status: "reconnecting" }>["reason"]): string {
  switch (r.kind) {
    case "lost":
    case "closed":
      return `lost ${r.node}`;
    case "timeout":
      return `${r.node} stopped answering`;
    case "moving":
      return `${r.node} is shutting down`;
    case "connect_failed":
      return `cannot reach ${r.node}`;
    case "rejected":
      return `${r.node} refused`;
    case "controller":
      return "controller unreachable";
    case "no_node":
      return "no node is up";
    case "gap":
      return "catching up";
    case "unauthorized":
      return "not authorized";
    case "revoked":
      return "device revoked";
    case "shutdown":
      return "shut down";
  }
}

/** The status line: which node this device is on and how the connection is. */
export function statusLine(status: Status, server: ServerState | null, waiting: number, now: Millis = Date.now(), since: Millis = now): StatusLine {
  const queue = waiting > 0 ? `${waiting} waiting to send` : "";
  const line = (tone: Tone, state: string, node: string | null, text: string, ...details: string[]): StatusLine => ({
    tone,
    state,
    node,
    text,
    detail: [...details, queue].filter(Boolean).join(" · "),
  });
  if (server?.phase === "starting") return line("busy", "starting", null, "Starting the local cluster…");
  if (server?.phase === "failed") return line("bad", "offline", null, "Offline · the local cluster did not start");
  switch (status.status) {
    case "live":
      return line("ok", "live", status.node, `Connected · node ${status.node}`);
    case "resyncing":
      return line("busy", "resyncing", status.node, `Resyncing · node ${status.node}`);
    case "connecting":
      return line("busy", "connecting", null, "Connecting…");
    case "reconnecting": {
      const seconds = Math.max(0, Math.ceil((status.in_ms - (now - since)) / 1000));
      const offline = status.attempt > 3;
      return line(
        offline ? "bad" : "warn",
        offline ? "offline" : "reconnecting",
        null,
        `${offline ? "Offline" : "Reconnecting"} · ${reasonText(status.reason)}`,
        seconds > 0 ? `retry in ${seconds} s` : "retrying now",
      );
    }
    case "stopped":
      return line("bad", "offline", null, `Offline · ${status.reason.kind === "shutdown" ? "disconnected" : "signed out"}`);
  }
}

/** Messages in outboxes and uploads not yet stored. */
export function waitingCount(s: ChatState): number {
  let n = 0;
  for (const t of Object.values(s.timelines)) for (const it of t.items) if (it.state === "pending") n++;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Timeline rows

export type Row =
  | { type: "day"; key: string; label: string }
  | { type: "unread"; key: string }
  | { type: "system"; key: string; text: string }
  | { type: "message"; key: string; item: Item; mine: boolean; first: boolean; last: boolean };

const GROUP_GAP_MS = 5 * 60_000;

function systemText(s: ChatState, it: Item): string {
  const who = it.user !== undefined ? userName(s, it.user) : "someone";
  const by = userName(s, it.sender);
  switch (it.action) {
    case "created":
      return `${by} created the conversation`;
    case "joined":
      return `${who} joined`;
    case "invited":
      return `${by} added ${who}`;
    case "left":
      return `${who} left`;
    default:
      return "";
  }
}

/** Rows to draw: a day separator when the day changes, membership lines, messages grouped
 * by sender (a name on the first of a group, a time on the last), and a "new messages" line
 * before the first message from someone else at or after `unreadFrom`. */
export function rows(s: ChatState, items: Item[], now: Millis = Date.now(), unreadFrom: Seq | null = null): Row[] {
  const out: Row[] = [];
  const me = s.me?.id;
  let lastDay = "";
  let divided = unreadFrom === null;
  for (let i = 0; i < items.length; i++) {
    const it = items[i]!;
    const day = dayLabel(it.at, now);
    if (day !== lastDay) {
      out.push({ type: "day", key: `d${it.key}`, label: day });
      lastDay = day;
    }
    if (it.kind === "member") {
      out.push({ type: "system", key: it.key, text: systemText(s, it) });
      continue;
    }
    let dividedHere = false;
    if (!divided && it.seq !== null && it.seq >= unreadFrom! && it.sender !== me && !it.deleted) {
      out.push({ type: "unread", key: "unread" });
      divided = dividedHere = true;
    }
    const prev = items[i - 1];
    const next = items[i + 1];
    const joins = (a: Item | undefined, b: Item) =>
      a !== undefined && a.kind === "message" && a.sender === b.sender && Math.abs(b.at - a.at) < GROUP_GAP_MS && dayLabel(a.at, now) === dayLabel(b.at, now);
    out.push({
      type: "message",
      key: it.key,
      item: it,
      mine: it.sender === me,
      first: dividedHere || !joins(prev, it),
      last: next === undefined || !joins(it, next),
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Receipts, typing, replies

export type Mark = "pending" | "failed" | "sent" | "read";

/** The mark on one of my messages. */
export function mark(s: ChatState, conv: ConvId, it: Item): Mark {
  if (it.state !== "sent" || it.seq === null) return it.state === "failed" ? "failed" : "pending";
  const c = s.convs[conv];
  if (!c) return "sent";
  if (c.kind === "direct") return (c.peer_read_seq ?? 0) >= it.seq ? "read" : "sent";
  const readers = s.timelines[conv]?.readers ?? {};
  return Object.values(readers).some((seq) => seq >= it.seq!) ? "read" : "sent";
}

/** "bob is typing…", "bob and carol are typing…", or null. */
export function typingLine(s: ChatState, conv: ConvId, now: Millis): string | null {
  const users = Object.entries(s.typing[conv] ?? {})
    .filter(([, until]) => until > now)
    .map(([u]) => userName(s, Number(u)));
  if (users.length === 0) return null;
  if (users.length === 1) return `${users[0]} is typing…`;
  if (users.length === 2) return `${users[0]} and ${users[1]} are typing…`;
  return `${users.length} people are typing…`;
}

/** The quoted line of a reply: who and what, if the original is loaded. */
export function quote(s: ChatState, conv: ConvId, id: string): { who: string; text: string } | null {
  const it = s.timelines[conv]?.items.find((x) => x.id === id);
  if (!it) return null;
  const plain = plainText(it.text);
  const text = it.deleted ? "Message deleted" : it.attachment ? `${it.attachment.name}${plain ? ` · ${plain}` : ""}` : plain;
  return { who: userName(s, it.sender), text };
}

/** People to offer after "@": the other side of a direct conversation, or the room's members
 * this window knows, whose names start with `prefix`; never me. */
export function mentionCandidates(s: ChatState, c: ConversationSummary, prefix: string, max = 6): UserInfo[] {
  const ids = new Set<UserId>();
  if (c.peer) ids.add(c.peer.id);
  for (const id of Object.keys(s.timelines[c.id]?.readers ?? {})) ids.add(Number(id));
  return [...ids]
    .filter((id) => id !== s.me?.id)
    .map((id) => ({ id, username: userName(s, id) }))
    .filter((u) => u.username.toLowerCase().startsWith(prefix))
    .sort((a, b) => a.username.localeCompare(b.username))
    .slice(0, max);
}

/** Text for an attachment chip: name and size. */
export function attachmentLabel(a: { name: string; size: number }): string {
  return `${a.name} · ${fileSize(a.size)}`;
}

/** The highest stored seq of a timeline (what "read up to" means for it). */
export function lastSeq(items: Item[]): number {
  for (let i = items.length - 1; i >= 0; i--) {
    const seq = items[i]!.seq;
    if (seq !== null) return seq;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Cluster panel

/** Whether a node's process still runs (the panel offers Kill), or has ended (Restart). */
export function processRuns(state: NodeView["state"]): boolean {
  return state === "live" || state === "draining" || state === "starting" || state === "paused";
}

// ---------------------------------------------------------------------------------------------
// Search

/** A search hit's snippet as runs of text, `match` set on the words that matched (the cache
 * marks them with \u0002 … \u0003; nothing here is ever treated as markup). */
export function snippetParts(snippet: string): { text: string; match: boolean }[] {
  const parts: { text: string; match: boolean }[] = [];
  let match = false;
  let run = "";
  for (const ch of snippet) {
    if (ch === "\u0002" || ch === "\u0003") {
      if (run) parts.push({ text: run, match });
      run = "";
      match = ch === "\u0002";
    } else {
      run += ch;
    }
  }
  if (run) parts.push({ text: run, match });
  return parts;
}
