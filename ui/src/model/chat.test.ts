import { describe, expect, it } from "vitest";
import type { ChatEvent, ConversationSummary, Snapshot, UiEvent } from "../ipc/types";
import { type ChatState, initialState, reduce } from "./chat";

const ME = { id: 1, username: "alice" };
const BOB = { id: 2, username: "bob" };

function dm(over: Partial<ConversationSummary> = {}): ConversationSummary {
  return {
    id: 3,
    kind: "direct",
    name: "bob",
    peer: BOB,
    public: false,
    member_count: 2,
    last_seq: 0,
    read_seq: 0,
    unread: 0,
    created_at: 1,
    ...over,
  };
}

function snapshot(over: Partial<Snapshot> = {}): Snapshot {
  return {
    session: { user: ME, device: "d1", device_name: "laptop" },
    status: { status: "connecting" },
    conversations: [dm()],
    users: [],
    presence: [],
    pending: [],
    ...over,
  };
}

function msg(seq: number, sender: number, text: string, clientId?: string): ChatEvent {
  return {
    conv: 3,
    seq,
    id: String(9000 + seq),
    at: 1000 + seq,
    sender,
    client_id: clientId,
    body: { type: "message", kind: "text", text },
  };
}

const ev = (e: UiEvent, now = 0) => ({ type: "ui_event" as const, event: e, now });
const event = (e: ChatEvent) => ev({ type: "event", ...e });

function open(s: ChatState): ChatState {
  return reduce(s, { type: "history", conv: 3, events: [], hasMore: false, older: false, offline: false });
}

function start(): ChatState {
  return open(reduce(initialState(), { type: "snapshot", snapshot: snapshot() }));
}

const items = (s: ChatState) => s.timelines[3]!.items;

describe("sending", () => {
  it("shows a message as pending, then sent on its ack, then once when its event returns", () => {
    let s = start();
    s = reduce(s, { type: "local_send", conv: 3, clientId: "c1", text: "hi", at: 5 });
    expect(items(s).map((i) => [i.text, i.state])).toEqual([["hi", "pending"]]);
    s = reduce(s, ev({ type: "acked", client_id: "c1", conv: 3, seq: 1, id: "9001", at: 1001 }));
    expect(items(s)[0]!.state).toBe("sent");
    s = reduce(s, event(msg(1, ME.id, "hi", "c1")));
    expect(items(s)).toHaveLength(1);
    expect(items(s)[0]!.key).toBe("s1");
  });

  it("replaces the pending message when the event comes before the ack", () => {
    let s = start();
    s = reduce(s, { type: "local_send", conv: 3, clientId: "c1", text: "hi", at: 5 });
    s = reduce(s, event(msg(1, ME.id, "hi", "c1")));
    s = reduce(s, ev({ type: "acked", client_id: "c1", conv: 3, seq: 1, id: "9001", at: 1001 }));
    expect(items(s).map((i) => [i.key, i.state])).toEqual([["s1", "sent"]]);
  });

  it("does not add a pending copy when the event returned before the command did", () => {
    let s = start();
    s = reduce(s, event(msg(1, ME.id, "hi", "c1")));
    s = reduce(s, { type: "local_send", conv: 3, clientId: "c1", text: "hi", at: 5 });
    expect(items(s)).toHaveLength(1);
  });

  it("marks a refused message failed, with the reason", () => {
    let s = start();
    s = reduce(s, { type: "local_send", conv: 3, clientId: "c1", text: "hi", at: 5 });
    s = reduce(s, ev({ type: "send_failed", client_id: "c1", code: "not_member", message: "not a member" }));
    expect(items(s)[0]).toMatchObject({ state: "failed", error: "not a member" });
    s = reduce(s, { type: "discard", conv: 3, key: items(s)[0]!.key });
    expect(items(s)).toHaveLength(0);
  });

  it("shows what waited in the outbox across a restart as pending", () => {
    const s = reduce(initialState(), {
      type: "snapshot",
      snapshot: snapshot({
        pending: [{ op: { type: "send", conv: 3, client_id: "c9", text: "written offline" }, queued_at: 7 }],
      }),
    });
    expect(s.timelines[3]!.items.map((i) => [i.text, i.state])).toEqual([["written offline", "pending"]]);
  });

  it("keeps stored messages in seq order ahead of pending ones", () => {
    let s = start();
    s = reduce(s, { type: "local_send", conv: 3, clientId: "c1", text: "mine", at: 5 });
    s = reduce(s, event(msg(2, BOB.id, "second")));
    s = reduce(s, event(msg(1, BOB.id, "first")));
    expect(items(s).map((i) => i.text)).toEqual(["first", "second", "mine"]);
  });
});

describe("receiving", () => {
  it("drops a replayed event it already has", () => {
    let s = start();
    s = reduce(s, event(msg(1, BOB.id, "hi")));
    s = reduce(s, event(msg(1, BOB.id, "hi")));
    expect(items(s)).toHaveLength(1);
    expect(s.convs[3]!.unread).toBe(1);
  });

  it("counts unread messages from others only, and clears them when read elsewhere", () => {
    let s = start();
    s = reduce(s, event(msg(1, BOB.id, "a")));
    s = reduce(s, event(msg(2, ME.id, "b")));
    s = reduce(s, event(msg(3, BOB.id, "c")));
    expect(s.convs[3]!.unread).toBe(2);
    expect(s.convs[3]!.last_seq).toBe(3);
    s = reduce(s, ev({ type: "read", conv: 3, user: ME.id, seq: 1 }));
    expect(s.convs[3]!.unread).toBe(1);
    s = reduce(s, ev({ type: "read", conv: 3, user: ME.id, seq: 3 }));
    expect(s.convs[3]!.unread).toBe(0);
  });

  it("does not count replayed events the welcome already counted", () => {
    let s = reduce(initialState(), { type: "snapshot", snapshot: snapshot() });
    s = reduce(s, ev({ type: "welcome", v: 1, node: "n1", user: ME, device: "d1", conversations: [dm({ last_seq: 2, unread: 2 })], presence: [], server_time: 0 }));
    s = reduce(s, event(msg(1, BOB.id, "a")));
    s = reduce(s, event(msg(2, BOB.id, "b")));
    expect(s.convs[3]!.unread).toBe(2);
  });

  it("applies edits and deletes to their target and to the list preview", () => {
    let s = start();
    s = reduce(s, event(msg(1, BOB.id, "helo")));
    s = reduce(s, event({ ...msg(2, BOB.id, ""), body: { type: "edit", target: "9001", text: "hello" } }));
    expect(items(s)[0]).toMatchObject({ text: "hello" });
    expect(items(s)[0]!.editedAt).toBeDefined();
    expect(s.convs[3]!.last_message?.body).toMatchObject({ text: "hello" });
    s = reduce(s, event({ ...msg(3, BOB.id, ""), body: { type: "delete", target: "9001" } }));
    expect(items(s)[0]).toMatchObject({ deleted: true, text: "" });
  });

  it("applies live reactions in order, and trusts a history page's own", () => {
    const react = (seq: number, sender: number, emoji: string, on: boolean): ChatEvent => ({ ...msg(seq, sender, ""), body: { type: "reaction", target: "9001", emoji, on } });
    let s = start();
    s = reduce(s, event(msg(1, BOB.id, "ship it?")));
    s = reduce(s, event(react(2, ME.id, "👍", true)));
    s = reduce(s, event(react(3, BOB.id, "👍", true)));
    s = reduce(s, event(react(4, BOB.id, "🎉", true)));
    s = reduce(s, event(react(5, ME.id, "👍", false)));
    expect(items(s)[0]!.reactions).toEqual([
      { emoji: "👍", users: [BOB.id] },
      { emoji: "🎉", users: [BOB.id] },
    ]);
    // Reactions are not messages: no unread, and the preview stays the message.
    expect(s.convs[3]!.unread).toBe(1);
    expect(s.convs[3]!.last_message?.body).toMatchObject({ text: "ship it?" });
    // A page shows the message as it is now; its reaction events are not applied again.
    const now = { ...msg(1, BOB.id, "ship it?"), body: { type: "message" as const, kind: "text" as const, text: "ship it?", reactions: [{ emoji: "🎉", users: [BOB.id] }] } };
    s = reduce(s, { type: "history", conv: 3, events: [now, react(2, ME.id, "👍", true), react(4, BOB.id, "🎉", true)], hasMore: false, older: false, offline: false });
    expect(items(s)[0]!.reactions).toEqual([{ emoji: "🎉", users: [BOB.id] }]);
  });

  it("undoes my edit when the server refuses it", () => {
    let s = start();
    s = reduce(s, event(msg(1, ME.id, "mine")));
    s = reduce(s, { type: "local_edit", conv: 3, target: "9001", text: "changed", clientId: "e1", at: 9 });
    expect(items(s)[0]!.text).toBe("changed");
    s = reduce(s, ev({ type: "send_failed", client_id: "e1", code: "forbidden", message: "not yours" }, 50));
    expect(items(s)[0]!.text).toBe("mine");
    expect(s.notices[0]?.text).toContain("not yours");
  });

  it("takes a deleted unread message out of the badge, and shows the message before it", () => {
    let s = start();
    s = reduce(s, event(msg(1, BOB.id, "first")));
    s = reduce(s, event(msg(2, BOB.id, "oops")));
    expect(s.convs[3]!.unread).toBe(2);
    s = reduce(s, event({ ...msg(3, BOB.id, ""), body: { type: "delete", target: "9002" } }));
    expect(s.convs[3]!.unread).toBe(1);
    expect(s.convs[3]!.last_message?.body).toMatchObject({ text: "first" });
    // The same for a conversation never opened: the list's last message says whose it was.
    let t = reduce(initialState(), { type: "snapshot", snapshot: snapshot({ conversations: [dm({ last_seq: 1, unread: 1, last_message: msg(1, BOB.id, "x") })] }) });
    t = reduce(t, event({ ...msg(2, BOB.id, ""), body: { type: "delete", target: "9001" } }));
    expect(t.convs[3]!.unread).toBe(0);
  });

  it("hides a message I delete until the delete is sent, and brings it back on undo", () => {
    let s = start();
    s = reduce(s, event({ ...msg(1, ME.id, "keep me"), body: { type: "message", kind: "text", text: "keep me", reply_to: "1" } }));
    s = reduce(s, { type: "hide", conv: 3, target: "9001" });
    expect(items(s)[0]).toMatchObject({ deleted: true, text: "" });
    // A page of history arriving meanwhile does not bring it back.
    s = reduce(s, { type: "history", conv: 3, events: [msg(1, ME.id, "keep me")], hasMore: false, older: false, offline: false });
    expect(items(s)[0]!.deleted).toBe(true);
    s = reduce(s, { type: "unhide", target: "9001" });
    expect(items(s)[0]).toMatchObject({ deleted: false, text: "keep me" });
    expect(s.hidden).toEqual({});
  });

  it("says when the window moved to another node, and how much it caught up", () => {
    let s = start();
    const status = (st: Record<string, unknown>) => ev({ type: "status", ...st } as UiEvent);
    s = reduce(s, status({ status: "resyncing", node: "n1" }));
    s = reduce(s, status({ status: "live", node: "n1" }));
    expect(s.notices).toEqual([]);
    s = reduce(s, status({ status: "reconnecting", attempt: 1, in_ms: 0, reason: { kind: "lost", node: "n1", message: "reset" } }));
    s = reduce(s, status({ status: "connecting" }));
    s = reduce(s, status({ status: "resyncing", node: "n2" }));
    s = reduce(s, event(msg(1, BOB.id, "while away")));
    s = reduce(s, event(msg(2, BOB.id, "and this")));
    s = reduce(s, status({ status: "live", node: "n2" }));
    expect(s.notices.map((n) => n.text)).toEqual(["Moved n1 → n2 · 2 messages caught up"]);
    s = reduce(s, { type: "notices_shown" });
    // Back on the same node: nothing to say.
    s = reduce(s, status({ status: "resyncing", node: "n2" }));
    s = reduce(s, status({ status: "live", node: "n2" }));
    expect(s.notices).toEqual([]);
  });

  it("learns a new contact's presence from the member list", () => {
    let s = start();
    s = reduce(s, ev({ type: "members", conv: 3, members: [{ user: BOB, read_seq: 0, online: true, joined_seq: 1 }] }));
    expect(s.online[BOB.id]).toBe(true);
  });

  it("tracks the peer's read position for receipts", () => {
    let s = start();
    s = reduce(s, ev({ type: "read", conv: 3, user: BOB.id, seq: 4 }));
    expect(s.convs[3]!.peer_read_seq).toBe(4);
  });

  it("shows typing until it stops, expires, or a message arrives", () => {
    let s = start();
    s = reduce(s, ev({ type: "typing", conv: 3, user: BOB.id, active: true }, 1000));
    expect(Object.keys(s.typing[3]!)).toEqual(["2"]);
    s = reduce(s, { type: "tick", now: 1000 + 7000 });
    expect(Object.keys(s.typing[3]!)).toEqual([]);
    s = reduce(s, ev({ type: "typing", conv: 3, user: BOB.id, active: true }, 9000));
    s = reduce(s, event(msg(1, BOB.id, "done")));
    expect(Object.keys(s.typing[3]!)).toEqual([]);
  });

  it("removes a conversation I left and unselects it", () => {
    let s = reduce(start(), { type: "select", conv: 3 });
    s = reduce(s, ev({ type: "removed", conv: 3 }));
    expect(s.convs[3]).toBeUndefined();
    expect(s.selected).toBeNull();
  });

  it("merges history pages under live events without doubles", () => {
    let s = reduce(initialState(), { type: "snapshot", snapshot: snapshot() });
    s = reduce(s, { type: "cached", conv: 3, events: [msg(4, BOB.id, "cached")] });
    s = reduce(s, { type: "history", conv: 3, events: [msg(3, BOB.id, "c"), msg(4, BOB.id, "cached")], hasMore: true, older: false, offline: false });
    s = reduce(s, { type: "history", conv: 3, events: [msg(1, BOB.id, "a"), msg(2, BOB.id, "b")], hasMore: false, older: true, offline: false });
    expect(items(s).map((i) => i.seq)).toEqual([1, 2, 3, 4]);
    expect(s.timelines[3]!.hasMore).toBe(false);
  });
});
