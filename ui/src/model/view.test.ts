import { describe, expect, it } from "vitest";
import type { ChatEvent, ConversationSummary } from "../ipc/types";
import { initialState, reduce } from "./chat";
import { mark, mentionCandidates, peerOnline, preview, processRuns, rows, snippetParts, sortedConversations, statusLine, typingLine } from "./view";
import { fileSize, initials } from "./format";

const ME = { id: 1, username: "alice" };

function conv(id: number, at: number, over: Partial<ConversationSummary> = {}): ConversationSummary {
  return {
    id,
    kind: "room",
    name: `room${id}`,
    public: true,
    member_count: 3,
    last_seq: 1,
    read_seq: 0,
    unread: 0,
    created_at: at,
    ...over,
  };
}

function msg(seq: number, sender: number, text: string, at = 1000 + seq): ChatEvent {
  return { conv: 3, seq, id: String(seq), at, sender, body: { type: "message", kind: "text", text } };
}

function state(list: ConversationSummary[]) {
  return reduce(initialState(), {
    type: "snapshot",
    snapshot: {
      session: { user: ME, device: "d", device_name: "x" },
      status: { status: "connecting" },
      conversations: list,
      users: [{ id: 2, username: "bob" }],
      presence: [],
      pending: [],
    },
  });
}

describe("conversation list", () => {
  it("sorts by last activity and previews with the sender", () => {
    const s = state([conv(1, 10), conv(2, 5, { last_message: msg(1, 2, "hello  there", 50) })]);
    expect(sortedConversations(s).map((c) => c.id)).toEqual([2, 1]);
    expect(preview(s, s.convs[2]!)).toBe("bob: hello there");
    expect(preview(s, s.convs[1]!)).toBe("3 members");
  });

  it("shows what I am sending, and what failed", () => {
    let s = state([conv(1, 10, { kind: "direct", last_message: msg(1, 2, "hi") })]);
    s = reduce(s, { type: "local_send", conv: 1, clientId: "c1", text: "on my way", at: 20 });
    expect(preview(s, s.convs[1]!)).toBe("Sending: on my way");
    s = reduce(s, { type: "ui_event", event: { type: "send_failed", client_id: "c1", code: "invalid", message: "no" }, now: 0 });
    expect(preview(s, s.convs[1]!)).toBe("Not sent: on my way");
  });

  it("says You: for my own last message", () => {
    const s = state([conv(1, 10, { kind: "direct", last_message: msg(1, 1, "hi") })]);
    expect(preview(s, s.convs[1]!)).toBe("You: hi");
  });
});

describe("status line", () => {
  it("names the node and the state", () => {
    expect(statusLine({ status: "live", node: "n2" }, null, 0)).toMatchObject({ state: "live", node: "n2", text: "Connected · node n2", detail: "" });
    expect(statusLine({ status: "resyncing", node: "n1" }, null, 0).state).toBe("resyncing");
    const r = statusLine({ status: "reconnecting", attempt: 1, in_ms: 2000, reason: { kind: "lost", node: "n2", message: "reset" } }, null, 2, 1000, 0);
    expect(r).toMatchObject({ state: "reconnecting", tone: "warn", text: "Reconnecting · lost n2", detail: "retry in 1 s · 2 waiting to send" });
    const o = statusLine({ status: "reconnecting", attempt: 5, in_ms: 0, reason: { kind: "no_node" } }, null, 0);
    expect(o).toMatchObject({ state: "offline", text: "Offline · no node is up", detail: "retrying now" });
  });

  it("says when the local cluster is starting", () => {
    expect(statusLine({ status: "connecting" }, { phase: "starting", choice: { mode: "local" } }, 0).state).toBe("starting");
  });
});

describe("timeline rows", () => {
  it("groups consecutive messages of one sender and separates days", () => {
    const now = new Date(2025, 0, 10, 12).getTime();
    const yesterday = now - 86_400_000;
    const s = reduce(state([conv(3, 0)]), { type: "history", conv: 3, events: [msg(1, 2, "a", yesterday), msg(2, 2, "b", now - 60_000), msg(3, 2, "c", now - 30_000), msg(4, 1, "d", now)], hasMore: false, older: false, offline: false });
    const r = rows(s, s.timelines[3]!.items, now);
    expect(r.map((x) => x.type)).toEqual(["day", "message", "day", "message", "message", "message"]);
    const [, , , b, c, d] = r;
    expect(b).toMatchObject({ first: true, last: false });
    expect(c).toMatchObject({ first: false, last: true });
    expect(d).toMatchObject({ mine: true, first: true });
  });

  it("puts the new-messages line before the first unread message from someone else", () => {
    const now = new Date(2025, 0, 10, 12).getTime();
    const s = reduce(state([conv(3, 0)]), { type: "history", conv: 3, events: [msg(1, 2, "a", now), msg(2, 1, "mine", now), msg(3, 2, "b", now), msg(4, 2, "c", now)], hasMore: false, older: false, offline: false });
    const r = rows(s, s.timelines[3]!.items, now, 2);
    expect(r.map((x) => x.type)).toEqual(["day", "message", "message", "unread", "message", "message"]);
    expect(r[4]).toMatchObject({ first: true });
    expect(rows(s, s.timelines[3]!.items, now, null).some((x) => x.type === "unread")).toBe(false);
  });
});

describe("search and mentions", () => {
  it("splits a snippet into plain and matched runs", () => {
    expect(snippetParts("…the \u0002caf\u0003é is \u0002open\u0003")).toEqual([
      { text: "…the ", match: false },
      { text: "caf", match: true },
      { text: "é is ", match: false },
      { text: "open", match: true },
    ]);
  });

  it("offers the room's other members by prefix", () => {
    let s = state([conv(3, 0)]);
    s = reduce(s, { type: "members", conv: 3, members: [1, 2, 3].map((id) => ({ user: { id, username: ["alice", "bob", "bea"][id - 1]! }, read_seq: 0, online: true, joined_seq: 1 })) });
    expect(mentionCandidates(s, s.convs[3]!, "b").map((u) => u.username)).toEqual(["bea", "bob"]);
    expect(mentionCandidates(s, s.convs[3]!, "a")).toEqual([]);
  });
});

describe("presence", () => {
  it("is unknown while this device is not connected", () => {
    let s = state([conv(3, 0, { kind: "direct", peer: { id: 2, username: "bob" } })]);
    s = reduce(s, { type: "ui_event", event: { type: "presence", user: 2, online: true }, now: 0 });
    expect(peerOnline(s, s.convs[3]!)).toBeNull();
    s = reduce(s, { type: "ui_event", event: { type: "status", status: "live", node: "n1" }, now: 0 });
    expect(peerOnline(s, s.convs[3]!)).toBe(true);
    expect(peerOnline(s, conv(4, 0))).toBeNull();
  });
});

describe("receipts and typing", () => {
  it("marks my messages read once the peer's read position passes them", () => {
    let s = state([conv(3, 0, { kind: "direct", peer: { id: 2, username: "bob" }, peer_read_seq: 1 })]);
    s = reduce(s, { type: "history", conv: 3, events: [msg(1, 1, "a"), msg(2, 1, "b")], hasMore: false, older: false, offline: false });
    const [a, b] = s.timelines[3]!.items;
    expect(mark(s, 3, a!)).toBe("read");
    expect(mark(s, 3, b!)).toBe("sent");
  });

  it("names who is typing", () => {
    let s = state([conv(3, 0)]);
    s = reduce(s, { type: "ui_event", event: { type: "typing", conv: 3, user: 2, active: true }, now: 0 });
    expect(typingLine(s, 3, 10)).toBe("bob is typing…");
    expect(typingLine(s, 3, 10_000)).toBeNull();
  });
});

describe("format", () => {
  it("sizes and initials", () => {
    expect(fileSize(512)).toBe("512 B");
    expect(fileSize(25 * 1024 * 1024)).toBe("25 MiB");
    expect(fileSize(1536)).toBe("1.5 KiB");
    expect(initials("alice")).toBe("AL");
    expect(initials("#general chat")).toBe("GC");
  });
});

describe("cluster panel", () => {
  it("offers Kill for every process that still runs, Restart once it has ended", () => {
    for (const state of ["live", "draining", "starting", "paused"]) expect(processRuns(state), state).toBe(true);
    for (const state of ["killed", "stopped", "exited", "gone"]) expect(processRuns(state), state).toBe(false);
  });
});
