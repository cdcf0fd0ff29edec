// The window's chat state and the one reducer that changes it. Everything the UI shows is
// derived from this state; the events from Rust, the pages of history and the user's own
// actions all go through `reduce`, which is pure (and unit-tested).
//
// Invariants:
// - A conversation's timeline holds each server event once, ordered by `seq`; messages not
//   yet stored (pending, failed) follow, in the order they were written.
// - A pending message is replaced by its stored event when the event arrives (matched by the
//   client id), whether its ack came first or not: nothing shows twice.

import { mentioned } from "./markup";
import type {
  Attachment,
  ChatEvent,
  Reactions,
  ConvId,
  ConversationSummary,
  MemberAction,
  MemberInfo,
  MessageId,
  MessageKind,
  Millis,
  OutboxItem,
  Seq,
  ServerState,
  Snapshot,
  Status,
  UiEvent,
  UserId,
  UserInfo,
} from "../ipc/types";

/** How long a typing indicator lasts without a refresh (the server's TYPING_TTL_MS). */
export const TYPING_TTL_MS = 6_000;

export type MessageState = "pending" | "sent" | "failed";

/** One row of a timeline: a message, or a membership change. */
export interface Item {
  /** Stable key: `s<seq>` once stored, `c<client id>` or `u<upload key>` before. */
  key: string;
  kind: "message" | "member";
  conv: ConvId;
  seq: Seq | null;
  id: MessageId | null;
  clientId: string | null;
  sender: UserId;
  at: Millis;
  msgKind: MessageKind;
  text: string;
  attachment?: Attachment;
  /** A file being uploaded (before it is a message). */
  uploadName?: string;
  replyTo?: MessageId;
  editedAt?: Millis;
  deleted: boolean;
  state: MessageState;
  /** Why it failed, for people. */
  error?: string;
  /** Reactions, in the order they were first given. */
  reactions?: Reactions[];
  /** Membership rows. */
  action?: MemberAction;
  user?: UserId;
}

export interface Timeline {
  items: Item[];
  /** Older events exist on the server (scrolling up loads them). */
  hasMore: boolean;
  /** The latest page was loaded (from the server or the cache). */
  loaded: boolean;
  loadingOlder: boolean;
  /** The page came from the cache because the server could not be reached. */
  offline: boolean;
  /** Other members' read positions (rooms; for direct conversations see `peer_read_seq`). */
  readers: Record<UserId, Seq>;
}

/** An edit or delete waiting for its ack, so a refusal can be undone. */
export interface PendingChange {
  conv: ConvId;
  target: MessageId;
  previous: { text: string; deleted: boolean; editedAt?: Millis; attachment?: Attachment };
}

export interface ChatState {
  me: UserInfo | null;
  device: string;
  deviceName: string;
  status: Status;
  server: ServerState | null;
  convs: Record<ConvId, ConversationSummary>;
  users: Record<UserId, string>;
  online: Record<UserId, boolean>;
  /** conv → user → when the indicator expires. */
  typing: Record<ConvId, Record<UserId, Millis>>;
  timelines: Record<ConvId, Timeline>;
  selected: ConvId | null;
  changes: Record<string, PendingChange>;
  /** Messages deleted here and not yet sent as deletes (they can still be undone). */
  hidden: Record<MessageId, PendingChange>;
  /** Short messages for toasts (a refused edit, a move to another node...), oldest first. */
  notices: Notice[];
  /** Where this window's connection has been: to tell a move to another node. */
  link: Link;
  /** Unread messages that mention me, per conversation (an "@" in the list). */
  mentions: Record<ConvId, number>;
  /** A message to bring into view and mark (a search hit, a quote clicked), once loaded. */
  focus: { conv: ConvId; seq: Seq } | null;
  /** Set when the session ended (revoked, token refused). */
  signedOut: string | null;
}

export interface Notice {
  text: string;
  tone: "info" | "error";
  at: Millis;
}

/** The node this window was last live on, and the resync under way, if any. */
export interface Link {
  lastNode: string | null;
  /** Since `resyncing`: the node left, the node reached, and the messages caught up. */
  resync: { from: string | null; to: string; caught: number } | null;
}

export type Action =
  | { type: "snapshot"; snapshot: Snapshot }
  | { type: "ui_event"; event: UiEvent; now: Millis }
  | { type: "cached"; conv: ConvId; events: ChatEvent[] }
  | { type: "history"; conv: ConvId; events: ChatEvent[]; hasMore: boolean; older: boolean; offline: boolean }
  | { type: "loading_older"; conv: ConvId; loading: boolean }
  | { type: "local_send"; conv: ConvId; clientId: string; text: string; replyTo?: MessageId; at: Millis }
  | { type: "local_upload"; conv: ConvId; key: string; name: string; caption: string; at: Millis }
  | { type: "upload_sent"; conv: ConvId; key: string; clientId: string }
  | { type: "local_failed"; conv: ConvId; key: string; message: string }
  | { type: "discard"; conv: ConvId; key: string }
  | { type: "local_edit"; conv: ConvId; target: MessageId; text: string; clientId: string; at: Millis }
  | { type: "local_delete"; conv: ConvId; target: MessageId; clientId: string }
  | { type: "select"; conv: ConvId | null }
  | { type: "members"; conv: ConvId; members: MemberInfo[] }
  | { type: "conversation"; summary: ConversationSummary }
  | { type: "marked_read"; conv: ConvId; seq: Seq }
  | { type: "focus"; conv: ConvId; seq: Seq | null }
  | { type: "hide"; conv: ConvId; target: MessageId }
  | { type: "unhide"; target: MessageId }
  | { type: "tick"; now: Millis }
  | { type: "notices_shown" };

export function initialState(): ChatState {
  return {
    me: null,
    device: "",
    deviceName: "",
    status: { status: "connecting" },
    server: null,
    convs: {},
    users: {},
    online: {},
    typing: {},
    timelines: {},
    selected: null,
    changes: {},
    hidden: {},
    notices: [],
    link: { lastNode: null, resync: null },
    focus: null,
    mentions: {},
    signedOut: null,
  };
}

export function emptyTimeline(): Timeline {
  return { items: [], hasMore: true, loaded: false, loadingOlder: false, offline: false, readers: {} };
}

// ---------------------------------------------------------------------------------------------
// Items

/** The timeline row for a stored event (message or membership), or null for edits/deletes. */
export function itemFromEvent(e: ChatEvent): Item | null {
  const base = {
    key: `s${e.seq}`,
    conv: e.conv,
    seq: e.seq,
    id: e.id,
    clientId: e.client_id ?? null,
    sender: e.sender,
    at: e.at,
    state: "sent" as const,
  };
  switch (e.body.type) {
    case "message":
      return {
        ...base,
        kind: "message",
        msgKind: e.body.kind,
        text: e.body.deleted ? "" : e.body.text,
        attachment: e.body.deleted ? undefined : e.body.attachment,
        replyTo: e.body.reply_to,
        editedAt: e.body.edited_at,
        deleted: e.body.deleted ?? false,
        reactions: e.body.deleted ? [] : (e.body.reactions ?? []),
      };
    case "member":
      return {
        ...base,
        kind: "member",
        msgKind: "text",
        text: "",
        deleted: false,
        action: e.body.action,
        user: e.body.user,
      };
    default:
      return null;
  }
}

function pendingItem(conv: ConvId, clientId: string, sender: UserId, text: string, at: Millis, replyTo?: MessageId): Item {
  return {
    key: `c${clientId}`,
    kind: "message",
    conv,
    seq: null,
    id: null,
    clientId,
    sender,
    at,
    msgKind: "text",
    text,
    replyTo,
    deleted: false,
    state: "pending",
  };
}

function order(a: Item, b: Item): number {
  if (a.seq !== null && b.seq !== null) return a.seq - b.seq;
  if (a.seq !== null) return -1;
  if (b.seq !== null) return 1;
  return a.at - b.at;
}

/** One reaction event applied to a message's reactions: `user` gives `emoji` (once) or takes it
 * back; an emoji nobody gives any more goes. (As `protocol::model::Reactions::apply`.) */
export function applyReaction(list: Reactions[], user: UserId, emoji: string, on: boolean): Reactions[] {
  const i = list.findIndex((r) => r.emoji === emoji);
  if (i < 0) return on ? [...list, { emoji, users: [user] }] : list;
  const r = list[i]!;
  const users = on ? (r.users.includes(user) ? r.users : [...r.users, user]) : r.users.filter((u) => u !== user);
  if (users.length === 0) return list.filter((_, j) => j !== i);
  return list.map((x, j) => (j === i ? { ...x, users } : x));
}

/** Puts a stored event into a timeline: replaces the pending item it confirms, applies edits
 * and deletes to their target, ignores what is already there. Reactions are applied only when
 * `live` (arriving live or replayed in order): a history page's messages already carry theirs,
 * and the page's reaction events are only part of their story. */
export function mergeEvent(t: Timeline, e: ChatEvent, live = true): Timeline {
  if (e.body.type === "reaction") {
    if (!live) return t;
    const { target, emoji, on } = e.body;
    const items = t.items.map((it) => (it.id === target && !it.deleted ? { ...it, reactions: applyReaction(it.reactions ?? [], e.sender, emoji, on) } : it));
    return { ...t, items };
  }
  if (e.body.type === "edit" || e.body.type === "delete") {
    const body = e.body;
    const items = t.items.map((it) => {
      if (it.id !== body.target) return it;
      return body.type === "edit"
        ? { ...it, text: body.text, editedAt: e.at }
        : { ...it, text: "", attachment: undefined, deleted: true, reactions: [] };
    });
    return { ...t, items };
  }
  const item = itemFromEvent(e);
  if (!item) return t;
  const items = t.items.filter(
    (it) => it.seq !== e.seq && !(e.client_id !== undefined && it.seq === null && it.clientId === e.client_id),
  );
  const existing = t.items.find((it) => it.seq === e.seq);
  // A history page carries messages in their current state; a replayed live event may be
  // older than an edit we already applied, so keep the newer text.
  if (existing && existing.editedAt && !item.editedAt) {
    item.text = existing.text;
    item.editedAt = existing.editedAt;
  }
  // A live message event carries no reactions; the ones already applied stay.
  if (live && existing?.reactions?.length && !item.reactions?.length) item.reactions = existing.reactions;
  if (existing?.deleted) {
    item.deleted = true;
    item.text = "";
    item.attachment = undefined;
    item.reactions = [];
  }
  items.push(item);
  items.sort(order);
  return { ...t, items };
}

function mergeAll(t: Timeline, events: ChatEvent[]): Timeline {
  return events.reduce((acc, e) => mergeEvent(acc, e, false), t);
}

// ---------------------------------------------------------------------------------------------
// Reducer

function timeline(s: ChatState, conv: ConvId): Timeline {
  return s.timelines[conv] ?? emptyTimeline();
}

function withTimeline(s: ChatState, conv: ConvId, t: Timeline): ChatState {
  return { ...s, timelines: { ...s.timelines, [conv]: t } };
}

function updateItems(s: ChatState, conv: ConvId, f: (it: Item) => Item): ChatState {
  const t = s.timelines[conv];
  if (!t) return s;
  return withTimeline(s, conv, { ...t, items: t.items.map(f) });
}

function pendingFromOutbox(s: ChatState, items: OutboxItem[]): ChatState {
  const me = s.me;
  if (!me) return s;
  let next = s;
  for (const { op, queued_at } of items) {
    if (op.type !== "send") continue;
    const t = timeline(next, op.conv);
    if (t.items.some((it) => it.clientId === op.client_id)) continue;
    const item = pendingItem(op.conv, op.client_id, me.id, op.text, queued_at, op.reply_to);
    if (op.kind && op.kind !== "text") {
      item.msgKind = op.kind;
      item.uploadName = "attachment";
    }
    next = withTimeline(next, op.conv, { ...t, items: [...t.items, item].sort(order) });
  }
  return next;
}

function addUsers(s: ChatState, users: UserInfo[]): ChatState {
  if (users.length === 0) return s;
  const names = { ...s.users };
  for (const u of users) names[u.id] = u.username;
  return { ...s, users: names };
}

function usersOf(convs: ConversationSummary[]): UserInfo[] {
  return convs.flatMap((c) => (c.peer ? [c.peer] : []));
}

function setConversations(s: ChatState, list: ConversationSummary[]): ChatState {
  const convs: Record<ConvId, ConversationSummary> = {};
  for (const c of list) convs[c.id] = c;
  const selected = s.selected !== null && convs[s.selected] ? s.selected : null;
  return addUsers({ ...s, convs, selected }, usersOf(list));
}

/** Counts messages from others after `readSeq`, when the timeline holds all of them. */
function unreadFrom(s: ChatState, conv: ConvId, readSeq: Seq, fallback: number): number {
  const t = s.timelines[conv];
  const c = s.convs[conv];
  if (!t || !c || !s.me) return fallback;
  const stored = t.items.filter((it) => it.seq !== null);
  const first = stored[0]?.seq ?? Infinity;
  if (first > readSeq + 1) return fallback;
  return stored.filter((it) => it.kind === "message" && it.seq! > readSeq && it.sender !== s.me!.id && !it.deleted).length;
}

/** A timeline message as the event a summary's `last_message` holds. */
function eventOf(it: Item): ChatEvent {
  return {
    conv: it.conv,
    seq: it.seq ?? 0,
    id: it.id ?? "",
    at: it.at,
    sender: it.sender,
    body: { type: "message", kind: it.msgKind, text: it.text, attachment: it.attachment, reply_to: it.replyTo, edited_at: it.editedAt },
  };
}

/** Whether deleting `target` takes an unread message away: someone else's, after my read
 * position, not already deleted. Known from the timeline, or from the list's last message. */
function deletesUnread(s: ChatState, conv: ConvId, target: MessageId): boolean {
  const c = s.convs[conv];
  if (!c || !s.me) return false;
  const known = s.timelines[conv]?.items.find((it) => it.id === target);
  const last = c.last_message?.id === target ? c.last_message : undefined;
  const sender = known?.sender ?? last?.sender;
  const seq = known?.seq ?? last?.seq;
  const deleted = known ? known.deleted && !s.hidden[target] : last?.body.type === "message" && last.body.deleted === true;
  return sender !== undefined && sender !== s.me.id && seq !== undefined && seq !== null && seq > c.read_seq && !deleted;
}

function onChatEvent(s: ChatState, e: ChatEvent): ChatState {
  let next = s;
  const unreadGone = e.body.type === "delete" && deletesUnread(s, e.conv, e.body.target);
  const t = s.timelines[e.conv];
  if (t) next = withTimeline(next, e.conv, mergeEvent(t, e));
  const c = next.convs[e.conv];
  if (c && e.seq > c.last_seq) {
    const isMessage = e.body.type === "message";
    const fromOther = next.me !== null && e.sender !== next.me.id;
    next = {
      ...next,
      convs: {
        ...next.convs,
        [e.conv]: {
          ...c,
          last_seq: e.seq,
          last_message: isMessage ? e : c.last_message,
          unread: isMessage && fromOther && e.seq > c.read_seq ? c.unread + 1 : c.unread,
        },
      },
    };
  }
  const cc = next.convs[e.conv];
  if (cc && unreadGone) {
    next = { ...next, convs: { ...next.convs, [e.conv]: { ...cc, unread: Math.max(0, cc.unread - 1) } } };
  }
  const c2 = next.convs[e.conv];
  if (c2 && c2.last_message && (e.body.type === "edit" || e.body.type === "delete") && c2.last_message.id === e.body.target) {
    // Keep the list's preview in step with an edit or delete of the last message: after a
    // delete it shows the message before, when this window has it.
    const lm = c2.last_message;
    if (lm.body.type === "message") {
      const items = next.timelines[e.conv]?.items ?? [];
      const before = [...items].reverse().find((it) => it.kind === "message" && it.seq !== null && !it.deleted && it.seq < lm.seq);
      const last =
        e.body.type === "edit"
          ? { ...lm, body: { ...lm.body, text: e.body.text, edited_at: e.at } }
          : before
            ? eventOf(before)
            : { ...lm, body: { ...lm.body, text: "", attachment: undefined, deleted: true } };
      next = { ...next, convs: { ...next.convs, [e.conv]: { ...c2, last_message: last } } };
    }
  }
  if (e.body.type === "delete" && next.hidden[e.body.target]) {
    // Deleted for good (from another device, or this one's delete came back).
    const hidden = { ...next.hidden };
    delete hidden[e.body.target];
    next = { ...next, hidden };
  }
  if (e.body.type === "message" && next.me && e.sender !== next.me.id && !e.body.deleted && e.seq > (next.convs[e.conv]?.read_seq ?? 0) && mentioned(e.body.text).includes(next.me.username)) {
    next = { ...next, mentions: { ...next.mentions, [e.conv]: (next.mentions[e.conv] ?? 0) + 1 } };
  }
  if (next.link.resync && e.body.type === "message") {
    next = { ...next, link: { ...next.link, resync: { ...next.link.resync, caught: next.link.resync.caught + 1 } } };
  }
  if (e.body.type === "message" && next.typing[e.conv]?.[e.sender] !== undefined) {
    const typing = { ...next.typing[e.conv] };
    delete typing[e.sender];
    next = { ...next, typing: { ...next.typing, [e.conv]: typing } };
  }
  return next;
}

/** Follows the connection: a window that was live on one node and is live again on another
 * gets a notice saying so, with how many messages it caught up on the way. */
function onStatus(s: ChatState, status: Status, now: Millis): ChatState {
  let link = s.link;
  let notices = s.notices;
  if (status.status === "resyncing") {
    link = { ...link, resync: { from: link.lastNode, to: status.node, caught: 0 } };
  } else if (status.status === "live") {
    const r = link.resync;
    if (r && r.from !== null && r.from !== status.node) {
      const caught = r.caught === 0 ? "nothing missed" : `${r.caught} message${r.caught === 1 ? "" : "s"} caught up`;
      notices = [...notices, { text: `Moved ${r.from} → ${status.node} · ${caught}`, tone: "info", at: now }];
    }
    link = { lastNode: status.node, resync: null };
  } else if (link.resync) {
    link = { ...link, resync: null };
  }
  return { ...s, status, link, notices };
}

/** A member list: names, other members' read positions, everyone's presence. */
function withMembers(s: ChatState, conv: ConvId, members: MemberInfo[]): ChatState {
  const t = timeline(s, conv);
  const readers = { ...t.readers };
  const online = { ...s.online };
  for (const m of members) {
    if (s.me && m.user.id === s.me.id) continue;
    readers[m.user.id] = Math.max(readers[m.user.id] ?? 0, m.read_seq);
    online[m.user.id] = m.online;
  }
  return addUsers(withTimeline({ ...s, online }, conv, { ...t, readers }), members.map((m) => m.user));
}

/** Messages hidden here (a delete that can still be undone) stay hidden whatever a page says. */
function keepHidden(s: ChatState, conv: ConvId): ChatState {
  const ids = Object.keys(s.hidden);
  if (ids.length === 0) return s;
  return updateItems(s, conv, (it) => (it.id !== null && s.hidden[it.id] ? { ...it, text: "", attachment: undefined, deleted: true } : it));
}

function onRead(s: ChatState, conv: ConvId, user: UserId, seq: Seq): ChatState {
  const c = s.convs[conv];
  if (s.me && user === s.me.id) {
    if (!c || seq <= c.read_seq) return s;
    const unread = seq >= c.last_seq ? 0 : unreadFrom(s, conv, seq, Math.min(c.unread, c.last_seq - seq));
    const mentions = unread === 0 && s.mentions[conv] ? { ...s.mentions, [conv]: 0 } : s.mentions;
    return { ...s, mentions, convs: { ...s.convs, [conv]: { ...c, read_seq: seq, unread } } };
  }
  let next = s;
  if (c && c.kind === "direct" && c.peer?.id === user && seq > (c.peer_read_seq ?? 0)) {
    next = { ...next, convs: { ...next.convs, [conv]: { ...c, peer_read_seq: seq } } };
  }
  const t = next.timelines[conv];
  if (t && seq > (t.readers[user] ?? 0)) {
    next = withTimeline(next, conv, { ...t, readers: { ...t.readers, [user]: seq } });
  }
  return next;
}

function onUiEvent(s: ChatState, ev: UiEvent, now: Millis): ChatState {
  switch (ev.type) {
    case "status": {
      const { type: _t, ...status } = ev;
      return onStatus(s, status as Status, now);
    }
    case "welcome": {
      const next = setConversations({ ...s, me: ev.user, device: ev.device }, ev.conversations);
      const online: Record<UserId, boolean> = {};
      for (const p of ev.presence) online[p.user] = p.online;
      return addUsers({ ...next, online }, [ev.user]);
    }
    case "event": {
      const { type: _t, ...e } = ev;
      return onChatEvent(s, e as ChatEvent);
    }
    case "acked": {
      const change = s.changes[ev.client_id];
      if (change) {
        const changes = { ...s.changes };
        delete changes[ev.client_id];
        return { ...s, changes };
      }
      return updateItems(s, ev.conv, (it) =>
        it.seq === null && it.clientId === ev.client_id
          ? { ...it, state: "sent", seq: ev.seq, id: ev.id, at: ev.at }
          : it,
      );
    }
    case "send_failed": {
      const change = s.changes[ev.client_id];
      if (change) {
        const changes = { ...s.changes };
        delete changes[ev.client_id];
        const next = updateItems({ ...s, changes }, change.conv, (it) =>
          it.id === change.target ? { ...it, ...change.previous } : it,
        );
        return { ...next, notices: [...next.notices, { text: `Not changed: ${ev.message}`, tone: "error", at: now }] };
      }
      let next = s;
      for (const conv of Object.keys(s.timelines).map(Number)) {
        next = updateItems(next, conv, (it) =>
          it.seq === null && it.clientId === ev.client_id ? { ...it, state: "failed", error: ev.message } : it,
        );
      }
      return next;
    }
    case "presence":
      return { ...s, online: { ...s.online, [ev.user]: ev.online } };
    case "typing": {
      if (s.me && ev.user === s.me.id) return s;
      const conv = { ...(s.typing[ev.conv] ?? {}) };
      if (ev.active) conv[ev.user] = now + TYPING_TTL_MS;
      else delete conv[ev.user];
      return { ...s, typing: { ...s.typing, [ev.conv]: conv } };
    }
    case "read":
      return onRead(s, ev.conv, ev.user, ev.seq);
    case "server":
      return { ...s, server: ev.state };
    case "conversation":
      return addUsers({ ...s, convs: { ...s.convs, [ev.summary.id]: ev.summary } }, usersOf([ev.summary]));
    case "removed": {
      const convs = { ...s.convs };
      delete convs[ev.conv];
      const timelines = { ...s.timelines };
      delete timelines[ev.conv];
      return { ...s, convs, timelines, selected: s.selected === ev.conv ? null : s.selected };
    }
    case "members":
      return withMembers(s, ev.conv, ev.members);
    case "signed_out":
      return { ...s, signedOut: ev.reason };
    case "server_error":
    case "moving":
      return s;
  }
}

export function reduce(s: ChatState, a: Action): ChatState {
  switch (a.type) {
    case "snapshot": {
      const snap = a.snapshot;
      let next: ChatState = {
        ...s,
        me: snap.session.user,
        device: snap.session.device,
        deviceName: snap.session.device_name,
        status: snap.status,
        signedOut: null,
      };
      next = setConversations(next, snap.conversations);
      next = addUsers(next, snap.users);
      if (snap.presence.length > 0) {
        const online: Record<UserId, boolean> = {};
        for (const p of snap.presence) online[p.user] = p.online;
        next = { ...next, online };
      }
      return pendingFromOutbox(next, snap.pending);
    }
    case "ui_event":
      return onUiEvent(s, a.event, a.now);
    case "cached": {
      const t = timeline(s, a.conv);
      if (t.loaded) return s;
      return keepHidden(withTimeline(s, a.conv, mergeAll(t, a.events)), a.conv);
    }
    case "history": {
      const t = timeline(s, a.conv);
      const merged = mergeAll(t, a.events);
      const hasMore = a.older || !t.loaded ? a.hasMore : t.hasMore;
      return keepHidden(withTimeline(s, a.conv, { ...merged, hasMore, loaded: true, loadingOlder: false, offline: a.offline }), a.conv);
    }
    case "loading_older":
      return withTimeline(s, a.conv, { ...timeline(s, a.conv), loadingOlder: a.loading });
    case "local_send": {
      if (!s.me) return s;
      const t = timeline(s, a.conv);
      // Its event may have come back before the command returned.
      if (t.items.some((it) => it.clientId === a.clientId)) return s;
      const item = pendingItem(a.conv, a.clientId, s.me.id, a.text, a.at, a.replyTo);
      return withTimeline(s, a.conv, { ...t, items: [...t.items, item].sort(order) });
    }
    case "local_upload": {
      if (!s.me) return s;
      const t = timeline(s, a.conv);
      const item: Item = {
        ...pendingItem(a.conv, "", s.me.id, a.caption, a.at),
        key: a.key,
        clientId: null,
        msgKind: "file",
        uploadName: a.name,
      };
      return withTimeline(s, a.conv, { ...t, items: [...t.items, item].sort(order) });
    }
    case "upload_sent": {
      const t = s.timelines[a.conv];
      if (t?.items.some((it) => it.seq !== null && it.clientId === a.clientId)) {
        // Its event came back before the command returned: the upload row is done.
        return withTimeline(s, a.conv, { ...t, items: t.items.filter((it) => it.key !== a.key) });
      }
      return updateItems(s, a.conv, (it) => (it.key === a.key ? { ...it, clientId: a.clientId } : it));
    }
    case "local_failed":
      return updateItems(s, a.conv, (it) => (it.key === a.key ? { ...it, state: "failed", error: a.message } : it));
    case "discard": {
      const t = s.timelines[a.conv];
      if (!t) return s;
      return withTimeline(s, a.conv, { ...t, items: t.items.filter((it) => it.key !== a.key) });
    }
    case "local_edit":
    case "local_delete": {
      const t = s.timelines[a.conv];
      const target = t?.items.find((it) => it.id === a.target);
      if (!target) return s;
      // A delete that was hidden first remembers the message as it was before hiding.
      const change: PendingChange = s.hidden[a.target] ?? {
        conv: a.conv,
        target: a.target,
        previous: { text: target.text, deleted: target.deleted, editedAt: target.editedAt, attachment: target.attachment },
      };
      const hidden = { ...s.hidden };
      delete hidden[a.target];
      const next = updateItems({ ...s, hidden, changes: { ...s.changes, [a.clientId]: change } }, a.conv, (it) =>
        it.id !== a.target
          ? it
          : a.type === "local_edit"
            ? { ...it, text: a.text, editedAt: a.at }
            : { ...it, text: "", attachment: undefined, deleted: true },
      );
      return next;
    }
    case "focus":
      return { ...s, focus: a.seq === null ? null : { conv: a.conv, seq: a.seq } };
    case "hide": {
      const target = s.timelines[a.conv]?.items.find((it) => it.id === a.target);
      if (!target || s.hidden[a.target]) return s;
      const change: PendingChange = {
        conv: a.conv,
        target: a.target,
        previous: { text: target.text, deleted: target.deleted, editedAt: target.editedAt, attachment: target.attachment },
      };
      return updateItems({ ...s, hidden: { ...s.hidden, [a.target]: change } }, a.conv, (it) =>
        it.id === a.target ? { ...it, text: "", attachment: undefined, deleted: true } : it,
      );
    }
    case "unhide": {
      const change = s.hidden[a.target];
      if (!change) return s;
      const hidden = { ...s.hidden };
      delete hidden[a.target];
      return updateItems({ ...s, hidden }, change.conv, (it) => (it.id === a.target ? { ...it, ...change.previous } : it));
    }
    case "select":
      return { ...s, selected: a.conv };
    case "members":
      return withMembers(s, a.conv, a.members);
    case "conversation":
      return addUsers({ ...s, convs: { ...s.convs, [a.summary.id]: a.summary } }, usersOf([a.summary]));
    case "marked_read":
      return onRead(s, a.conv, s.me?.id ?? -1, a.seq);
    case "tick": {
      let changed = false;
      const typing: Record<ConvId, Record<UserId, Millis>> = {};
      for (const [conv, users] of Object.entries(s.typing)) {
        const kept: Record<UserId, Millis> = {};
        for (const [user, until] of Object.entries(users)) {
          if (until > a.now) kept[Number(user)] = until;
          else changed = true;
        }
        typing[Number(conv)] = kept;
      }
      return changed ? { ...s, typing } : s;
    }
    case "notices_shown":
      return { ...s, notices: [] };
  }
}
