// One open conversation: its header (presence or members, typing), the timeline, and the
// composer. Loads the cached events at once, then the latest page from the server; marks the
// conversation read while the window is focused and the bottom is in view.

import { useEffect, useRef, useState } from "preact/hooks";
import * as api from "../ipc/commands";
import type { ConversationSummary, MessageId } from "../ipc/types";
import type { Action, ChatState, Item } from "../model/chat";
import { emptyTimeline } from "../model/chat";
import { fileSize } from "../model/format";
import { peerOnline, title, typingLine } from "../model/view";
import type { Actions } from "./ChatScreen";
import { Avatar } from "./common";
import { Composer, type Draft } from "./Composer";
import { UsersIcon } from "./icons";
import { Timeline } from "./Timeline";

export type Dispatch = (a: Action) => void;

/** Uploads kept until they are sent, so a failed one can be retried. */
const uploads = new Map<string, { file: File; caption: string }>();

let maxAttachment: Promise<number> | null = null;
/** The server's attachment size limit, asked once. */
function limits(): Promise<number> {
  maxAttachment ??= api.serverInfo().then((i) => i.max_attachment_bytes);
  maxAttachment.catch(() => {
    maxAttachment = null;
  });
  return maxAttachment;
}

export function Conversation({ conv, state, dispatch, actions }: { conv: ConversationSummary; state: ChatState; dispatch: Dispatch; actions: Actions }) {
  const t = state.timelines[conv.id] ?? emptyTimeline();
  const [draft, setDraft] = useState<Draft>({ mode: "new" });
  const atBottom = useRef(true);
  const [focused, setFocused] = useState(document.hasFocus());
  const now = Date.now();

  // Cached events first (instant, works offline), then the server's latest page.
  useEffect(() => {
    let alive = true;
    api.cachedEvents(conv.id).then((events) => alive && dispatch({ type: "cached", conv: conv.id, events }), () => undefined);
    api.history(conv.id).then(
      (page) => alive && dispatch({ type: "history", conv: conv.id, events: page.events, hasMore: page.has_more, older: false, offline: page.offline }),
      (e) => alive && actions.fail(e),
    );
    // Members: names and read positions in rooms, presence everywhere (a new contact's
    // presence is not pushed until it changes).
    api.members(conv.id).then((members) => alive && dispatch({ type: "members", conv: conv.id, members }), () => undefined);
    return () => {
      alive = false;
    };
  }, [conv.id]);

  useEffect(() => {
    const on = () => setFocused(document.hasFocus());
    window.addEventListener("focus", on);
    window.addEventListener("blur", on);
    document.addEventListener("visibilitychange", on);
    return () => {
      window.removeEventListener("focus", on);
      window.removeEventListener("blur", on);
      document.removeEventListener("visibilitychange", on);
    };
  }, []);

  // Read receipts: what is on screen in a focused window is read.
  const markIfSeen = () => {
    if (!focused || !atBottom.current || conv.last_seq <= conv.read_seq) return;
    const seq = conv.last_seq;
    dispatch({ type: "marked_read", conv: conv.id, seq });
    api.markRead(conv.id, seq).catch(() => undefined);
  };
  useEffect(markIfSeen, [conv.last_seq, conv.read_seq, focused, t.loaded]);

  const loadOlder = () => {
    if (t.loadingOlder || !t.hasMore || !t.loaded) return;
    const oldest = t.items.find((it) => it.seq !== null)?.seq ?? null;
    if (oldest === null || oldest <= 1) return;
    dispatch({ type: "loading_older", conv: conv.id, loading: true });
    api.history(conv.id, oldest).then(
      (page) => dispatch({ type: "history", conv: conv.id, events: page.events, hasMore: page.has_more, older: true, offline: page.offline }),
      (e) => {
        dispatch({ type: "loading_older", conv: conv.id, loading: false });
        actions.fail(e);
      },
    );
  };

  const send = async (text: string, replyTo?: MessageId) => {
    try {
      const clientId = await api.sendMessage(conv.id, text, replyTo);
      dispatch({ type: "local_send", conv: conv.id, clientId, text, replyTo, at: Date.now() });
    } catch (e) {
      actions.fail(e);
      throw e;
    }
  };

  const upload = async (file: File, caption: string, key = `u${Date.now()}${Math.random().toString(36).slice(2)}`) => {
    uploads.set(key, { file, caption });
    dispatch({ type: "local_upload", conv: conv.id, key, name: file.name, caption, at: Date.now() });
    const limit = await limits().catch(() => null);
    if (limit !== null && file.size > limit) {
      // Explain the server's limit without reading the file at all.
      dispatch({ type: "local_failed", conv: conv.id, key, message: `${file.name} is ${fileSize(file.size)}; this server accepts attachments up to ${fileSize(limit)}.` });
      return;
    }
    try {
      const clientId = await api.sendAttachment(conv.id, file, caption);
      dispatch({ type: "upload_sent", conv: conv.id, key, clientId });
      uploads.delete(key);
    } catch (e) {
      dispatch({ type: "local_failed", conv: conv.id, key, message: api.toAppError(e).message });
    }
  };

  const retry = (it: Item) => {
    dispatch({ type: "discard", conv: conv.id, key: it.key });
    const pending = uploads.get(it.key);
    if (pending) {
      uploads.delete(it.key);
      void upload(pending.file, pending.caption);
    } else {
      void send(it.text, it.replyTo).catch(() => undefined);
    }
  };

  const discard = (it: Item) => {
    uploads.delete(it.key);
    dispatch({ type: "discard", conv: conv.id, key: it.key });
  };

  const edit = async (target: MessageId, text: string) => {
    try {
      const clientId = await api.editMessage(conv.id, target, text);
      dispatch({ type: "local_edit", conv: conv.id, target, text, clientId, at: Date.now() });
    } catch (e) {
      actions.fail(e);
      throw e;
    }
  };

  const remove = async (target: MessageId) => {
    try {
      const clientId = await api.deleteMessage(conv.id, target);
      dispatch({ type: "local_delete", conv: conv.id, target, clientId });
    } catch (e) {
      actions.fail(e);
    }
  };

  const online = peerOnline(state, conv);
  const typing = typingLine(state, conv.id, now);
  const subtitle = typing ?? (conv.kind === "direct" ? (online === null ? "direct message" : online ? "online" : "offline") : `${conv.member_count} member${conv.member_count === 1 ? "" : "s"}${conv.public ? " · public room" : " · private room"}`);

  return (
    <section class="conversation" data-testid="conversation-view" data-conv={conv.id} data-title={title(conv)}>
      <header class="conv-header">
        <Avatar name={title(conv)} size={36} online={online} room={conv.kind === "room"} />
        <div class="who">
          <strong>{title(conv)}</strong>
          <span class={`small ${typing ? "typing" : "muted"}`} data-testid={typing ? "typing" : "subtitle"}>
            {subtitle}
          </span>
        </div>
        {t.offline && <span class="pill warn" title="The server cannot be reached; showing what this device has">offline copy</span>}
        {conv.kind === "room" && (
          <button class="icon" title="Room members" aria-label="Room members" onClick={() => actions.open("room_info")} data-testid="room-info">
            <UsersIcon />
          </button>
        )}
      </header>
      <Timeline
        conv={conv}
        state={state}
        timeline={t}
        atBottom={atBottom}
        onBottom={markIfSeen}
        onTop={loadOlder}
        onReply={(it) => setDraft({ mode: "reply", item: it })}
        onEdit={(it) => setDraft({ mode: "edit", item: it })}
        onDelete={(it) => it.id && void remove(it.id)}
        onRetry={retry}
        onDiscard={discard}
        actions={actions}
      />
      <Composer
        conv={conv}
        state={state}
        draft={draft}
        setDraft={setDraft}
        onSend={send}
        onEdit={edit}
        onUpload={(file, caption) => void upload(file, caption)}
        actions={actions}
      />
    </section>
  );
}
