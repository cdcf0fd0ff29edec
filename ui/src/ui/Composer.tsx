// Writing: Enter sends, Shift+Enter breaks the line, Escape cancels a reply or an edit, Up edits
// my last message. Attach a file with the clip, by pasting, or by dropping it on the window.
// Tells the others I am typing (at most every 2 s), and that I stopped: after 4 s of quiet, on
// sending, on emptying the box, or on leaving the conversation.

import { useEffect, useRef, useState } from "preact/hooks";
import * as api from "../ipc/commands";
import type { ConversationSummary, MessageId } from "../ipc/types";
import type { ChatState, Item } from "../model/chat";
import { quote } from "../model/view";
import type { Actions } from "./ChatScreen";
import { AttachIcon, CloseIcon, EditIcon, ReplyIcon, SendIcon } from "./icons";

export type Draft = { mode: "new" } | { mode: "reply"; item: Item } | { mode: "edit"; item: Item };

const TYPING_EVERY_MS = 2000;
const TYPING_IDLE_MS = 4000;

interface Props {
  conv: ConversationSummary;
  state: ChatState;
  draft: Draft;
  setDraft: (d: Draft) => void;
  onSend: (text: string, replyTo?: MessageId) => Promise<void>;
  onEdit: (target: MessageId, text: string) => Promise<void>;
  onUpload: (file: File, caption: string) => void;
  actions: Actions;
}

export function Composer({ conv, state, draft, setDraft, onSend, onEdit, onUpload }: Props) {
  const [text, setText] = useState("");
  const area = useRef<HTMLTextAreaElement>(null);
  const fileInput = useRef<HTMLInputElement>(null);
  const typingSent = useRef(0);
  const idle = useRef<number | undefined>(undefined);
  const savedText = useRef("");

  const stopTyping = () => {
    window.clearTimeout(idle.current);
    if (typingSent.current > 0) {
      typingSent.current = 0;
      api.typing(conv.id, false).catch(() => undefined);
    }
  };

  useEffect(() => {
    area.current?.focus();
    return stopTyping;
  }, [conv.id]);

  useEffect(() => {
    if (draft.mode === "edit") {
      savedText.current = text;
      setText(draft.item.text);
    }
    area.current?.focus();
  }, [draft]);

  // Grow with the text, up to a limit.
  useEffect(() => {
    const el = area.current;
    if (!el) return;
    el.style.height = "auto";
    el.style.height = `${Math.min(el.scrollHeight, 200)}px`;
  }, [text]);

  const onInput = (value: string) => {
    setText(value);
    if (draft.mode === "edit") return;
    const now = Date.now();
    if (value.trim() && now - typingSent.current > TYPING_EVERY_MS) {
      typingSent.current = now;
      api.typing(conv.id, true).catch(() => undefined);
    }
    window.clearTimeout(idle.current);
    idle.current = window.setTimeout(stopTyping, TYPING_IDLE_MS);
    if (!value.trim()) stopTyping();
  };

  const cancel = () => {
    if (draft.mode === "edit") setText(savedText.current);
    setDraft({ mode: "new" });
  };

  const submit = async () => {
    const value = text.trim();
    if (!value) return;
    stopTyping();
    try {
      if (draft.mode === "edit") {
        if (draft.item.id && value !== draft.item.text) await onEdit(draft.item.id, value);
        setText(savedText.current);
      } else {
        setText("");
        await onSend(value, draft.mode === "reply" ? (draft.item.id ?? undefined) : undefined);
      }
      setDraft({ mode: "new" });
    } catch {
      // The error is shown as a toast; keep the text so nothing is lost.
      if (draft.mode !== "edit") setText(value);
    }
  };

  const onKeyDown = (e: KeyboardEvent) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      void submit();
    } else if (e.key === "Escape" && draft.mode !== "new") {
      e.preventDefault();
      cancel();
    } else if (e.key === "ArrowUp" && text === "" && draft.mode === "new") {
      const me = state.me?.id;
      const items = state.timelines[conv.id]?.items ?? [];
      const last = [...items].reverse().find((it) => it.sender === me && it.state === "sent" && it.kind === "message" && !it.deleted && !it.attachment);
      if (last) {
        e.preventDefault();
        setDraft({ mode: "edit", item: last });
      }
    }
  };

  const files = (list: FileList | null | undefined) => {
    if (!list) return;
    const caption = draft.mode === "edit" ? "" : text.trim();
    for (const file of Array.from(list)) onUpload(file, list.length === 1 ? caption : "");
    if (caption && draft.mode !== "edit") setText("");
  };

  const q = draft.mode === "reply" && draft.item.id ? quote(state, conv.id, draft.item.id) : null;

  return (
    <div
      class="composer"
      onDragOver={(e) => e.preventDefault()}
      onDrop={(e) => {
        e.preventDefault();
        files(e.dataTransfer?.files);
      }}
    >
      {draft.mode !== "new" && (
        <div class="draft-bar">
          {draft.mode === "reply" ? <ReplyIcon size={16} /> : <EditIcon size={16} />}
          <div class="draft-text">
            <strong>{draft.mode === "reply" ? `Replying to ${q?.who ?? ""}` : "Editing your message"}</strong>
            <span>{draft.mode === "reply" ? q?.text : draft.item.text}</span>
          </div>
          <button class="icon small" title="Cancel (Esc)" aria-label="Cancel" onClick={cancel}>
            <CloseIcon size={16} />
          </button>
        </div>
      )}
      <div class="compose-row">
        <button class="icon" title="Attach a file" aria-label="Attach a file" onClick={() => fileInput.current?.click()} disabled={draft.mode === "edit"} data-testid="attach">
          <AttachIcon />
        </button>
        <input
          type="file"
          ref={fileInput}
          hidden
          multiple
          data-testid="file-input"
          onChange={(e) => {
            files(e.currentTarget.files);
            e.currentTarget.value = "";
          }}
        />
        <textarea
          ref={area}
          rows={1}
          value={text}
          placeholder={draft.mode === "edit" ? "Edit your message" : `Message ${conv.kind === "room" ? `#${conv.name}` : (conv.peer?.username ?? conv.name)}`}
          onInput={(e) => onInput(e.currentTarget.value)}
          onKeyDown={onKeyDown}
          onPaste={(e) => {
            if (e.clipboardData?.files.length) {
              e.preventDefault();
              files(e.clipboardData.files);
            }
          }}
          aria-label="Message"
          data-testid="composer"
        />
        <button class="send" title="Send (Enter)" aria-label="Send" onClick={() => void submit()} disabled={!text.trim()} data-testid="send">
          <SendIcon />
        </button>
      </div>
      <p class="hint small">Enter to send · Shift+Enter for a new line</p>
    </div>
  );
}
