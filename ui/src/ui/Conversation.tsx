// One open conversation: its header (presence or members, typing), the timeline, and the
// composer. Opening it loads its events (see `ChatController.open`); it is marked read while
// the window is focused and the bottom is in view.

import { useEffect, useRef, useState } from "preact/hooks";
import type { ConversationSummary } from "../ipc/types";
import type { ChatState, Item } from "../model/chat";
import { emptyTimeline } from "../model/chat";
import type { ChatController } from "../model/controller";
import { peerOnline, title, typingLine } from "../model/view";
import { Avatar } from "./common";
import type { DialogName } from "./dialogs";
import { ConfirmDelete } from "./dialogs/ConfirmDelete";
import { MessageInfo } from "./dialogs/MessageInfo";
import { Composer, type Draft } from "./Composer";
import { UsersIcon } from "./icons";
import { Timeline } from "./Timeline";

export function Conversation({ conv, state, chat, open }: { conv: ConversationSummary; state: ChatState; chat: ChatController; open: (d: DialogName) => void }) {
  const t = state.timelines[conv.id] ?? emptyTimeline();
  const [draft, setDraft] = useState<Draft>({ mode: "new" });
  const [deleting, setDeleting] = useState<Item | null>(null);
  const [inspecting, setInspecting] = useState<Item | null>(null);
  // The first unread message when the conversation opened: the "new messages" line stays there.
  const [unreadFrom] = useState(conv.unread > 0 ? conv.read_seq + 1 : null);
  const atBottom = useRef(true);
  const [focused, setFocused] = useState(document.hasFocus());
  const now = Date.now();

  useEffect(() => chat.open(conv.id), [conv.id]);

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
    chat.markRead(conv.id, conv.last_seq);
  };
  useEffect(markIfSeen, [conv.last_seq, conv.read_seq, focused, t.loaded]);

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
          <button class="icon" title="Room members" aria-label="Room members" onClick={() => open("room_info")} data-testid="room-info">
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
        onTop={() => chat.loadOlder(conv.id)}
        onReply={(it) => setDraft({ mode: "reply", item: it })}
        onEdit={(it) => setDraft({ mode: "edit", item: it })}
        onDelete={setDeleting}
        onInfo={setInspecting}
        unreadFrom={unreadFrom}
        chat={chat}
      />
      <Composer
        conv={conv}
        state={state}
        draft={draft}
        setDraft={setDraft}
        chat={chat}
      />
      {inspecting && <MessageInfo item={inspecting} state={state} chat={chat} onClose={() => setInspecting(null)} />}
      {deleting?.id && <ConfirmDelete item={deleting} onConfirm={() => deleting.id && chat.deleteWithUndo(conv.id, deleting.id)} onClose={() => setDeleting(null)} />}
    </section>
  );
}
