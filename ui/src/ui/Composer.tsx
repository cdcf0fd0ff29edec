// Writing: Enter sends, Shift+Enter breaks the line, Escape cancels a reply or an edit, Up edits
// my last message. Files (the clip, pasting, or dropping them on the window) wait in a tray
// with a preview until the message is sent; the text goes with a single file as its caption.
// Typing "@" offers the conversation's members. Tells the others I am typing (at most every
// 2 s), and that I stopped: after 4 s of quiet, on sending, on emptying the box, on leaving.

import { useEffect, useRef, useState } from "preact/hooks";
import type { ConversationSummary } from "../ipc/types";
import type { ChatState, Item } from "../model/chat";
import type { ChatController } from "../model/controller";
import { fileSize } from "../model/format";
import { mentionCandidates, quote } from "../model/view";
import { Avatar } from "./common";
import { AttachIcon, CloseIcon, EditIcon, FileIcon, ReplyIcon, SendIcon } from "./icons";

export type Draft = { mode: "new" } | { mode: "reply"; item: Item } | { mode: "edit"; item: Item };

const TYPING_EVERY_MS = 2000;
const TYPING_IDLE_MS = 4000;

/** A file waiting to be sent, with a preview for images. */
interface Pending {
  key: number;
  file: File;
  preview: string | null;
}

interface Props {
  conv: ConversationSummary;
  state: ChatState;
  draft: Draft;
  setDraft: (d: Draft) => void;
  chat: ChatController;
}

/** The "@name" being typed just before the caret, if any. */
function mentionAt(text: string, caret: number): { start: number; prefix: string } | null {
  const m = /(^|\s)@([a-z0-9_.-]*)$/i.exec(text.slice(0, caret));
  return m ? { start: caret - m[2]!.length - 1, prefix: m[2]!.toLowerCase() } : null;
}

export function Composer({ conv, state, draft, setDraft, chat }: Props) {
  const [text, setText] = useState("");
  const [tray, setTray] = useState<Pending[]>([]);
  const [caret, setCaret] = useState(0);
  const [pick, setPick] = useState(0);
  const [dragging, setDragging] = useState(false);
  const area = useRef<HTMLTextAreaElement>(null);
  const fileInput = useRef<HTMLInputElement>(null);
  const typingSent = useRef(0);
  const idle = useRef<number | undefined>(undefined);
  const savedText = useRef("");
  const nextKey = useRef(1);

  const stopTyping = () => {
    window.clearTimeout(idle.current);
    if (typingSent.current > 0) {
      typingSent.current = 0;
      chat.typing(conv.id, false);
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

  // Previews are object URLs: give them back when their file leaves the tray.
  const trayRef = useRef(tray);
  trayRef.current = tray;
  useEffect(() => () => trayRef.current.forEach((p) => p.preview && URL.revokeObjectURL(p.preview)), []);

  const mention = draft.mode === "edit" ? null : mentionAt(text, caret);
  const candidates = mention ? mentionCandidates(state, conv, mention.prefix) : [];

  const onInput = (value: string, at: number) => {
    setText(value);
    setCaret(at);
    setPick(0);
    if (draft.mode === "edit") return;
    const now = Date.now();
    if (value.trim() && now - typingSent.current > TYPING_EVERY_MS) {
      typingSent.current = now;
      chat.typing(conv.id, true);
    }
    window.clearTimeout(idle.current);
    idle.current = window.setTimeout(stopTyping, TYPING_IDLE_MS);
    if (!value.trim()) stopTyping();
  };

  const complete = (username: string) => {
    if (!mention) return;
    const next = `${text.slice(0, mention.start)}@${username} ${text.slice(caret)}`;
    const at = mention.start + username.length + 2;
    setText(next);
    setCaret(at);
    requestAnimationFrame(() => area.current?.setSelectionRange(at, at));
    area.current?.focus();
  };

  const cancel = () => {
    if (draft.mode === "edit") setText(savedText.current);
    setDraft({ mode: "new" });
  };

  const addFiles = (list: FileList | File[] | null | undefined) => {
    if (!list || draft.mode === "edit") return;
    const added = Array.from(list).map((file) => ({
      key: nextKey.current++,
      file,
      preview: file.type.startsWith("image/") ? URL.createObjectURL(file) : null,
    }));
    if (added.length > 0) setTray((t) => [...t, ...added]);
    area.current?.focus();
  };

  const removeFile = (key: number) => {
    setTray((t) => {
      const gone = t.find((p) => p.key === key);
      if (gone?.preview) URL.revokeObjectURL(gone.preview);
      return t.filter((p) => p.key !== key);
    });
  };

  const submit = async () => {
    const value = text.trim();
    if (!value && tray.length === 0) return;
    stopTyping();
    try {
      if (draft.mode === "edit") {
        if (draft.item.id && value && value !== draft.item.text) await chat.edit(conv.id, draft.item.id, value);
        setText(savedText.current);
      } else {
        const files = tray;
        setText("");
        setTray([]);
        // One file carries the text as its caption; with several, the text goes first.
        const caption = files.length === 1 ? value : "";
        if (value && files.length !== 1) await chat.send(conv.id, value, draft.mode === "reply" ? (draft.item.id ?? undefined) : undefined);
        for (const p of files) {
          void chat.upload(conv.id, p.file, caption).finally(() => p.preview && URL.revokeObjectURL(p.preview));
        }
      }
      setDraft({ mode: "new" });
    } catch {
      // The error is shown as a toast; keep the text so nothing is lost.
      if (draft.mode !== "edit") setText(value);
    }
  };

  const onKeyDown = (e: KeyboardEvent) => {
    if (candidates.length > 0) {
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        e.preventDefault();
        setPick((p) => (p + (e.key === "ArrowDown" ? 1 : candidates.length - 1)) % candidates.length);
        return;
      }
      if (e.key === "Enter" || e.key === "Tab") {
        e.preventDefault();
        complete(candidates[Math.min(pick, candidates.length - 1)]!.username);
        return;
      }
      if (e.key === "Escape") {
        e.preventDefault();
        setCaret(-1);
        return;
      }
    }
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      void submit();
    } else if (e.key === "Escape" && draft.mode !== "new") {
      e.preventDefault();
      cancel();
    } else if (e.key === "Escape" && tray.length > 0) {
      e.preventDefault();
      tray.forEach((p) => removeFile(p.key));
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

  const q = draft.mode === "reply" && draft.item.id ? quote(state, conv.id, draft.item.id) : null;
  const canSend = text.trim() !== "" || (tray.length > 0 && draft.mode !== "edit");

  return (
    <div
      class={`composer${dragging ? " dragging" : ""}`}
      onDragOver={(e) => {
        e.preventDefault();
        setDragging(true);
      }}
      onDragLeave={() => setDragging(false)}
      onDrop={(e) => {
        e.preventDefault();
        setDragging(false);
        addFiles(e.dataTransfer?.files);
      }}
    >
      {candidates.length > 0 && (
        <ul class="mention-menu" role="listbox" aria-label="People to mention" data-testid="mention-menu">
          {candidates.map((u, i) => (
            <li key={u.id}>
              <button
                role="option"
                aria-selected={i === pick}
                class={i === pick ? "active" : ""}
                data-testid="mention-option"
                onMouseDown={(e) => {
                  e.preventDefault();
                  complete(u.username);
                }}
              >
                <Avatar name={u.username} size={24} />
                <span>{u.username}</span>
              </button>
            </li>
          ))}
        </ul>
      )}
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
      {tray.length > 0 && (
        <div class="tray" data-testid="attachment-tray" aria-label="Files to send">
          {tray.map((p) => (
            <div key={p.key} class="tray-item" data-testid="tray-item" title={p.file.name}>
              {p.preview ? <img src={p.preview} alt={p.file.name} data-testid="tray-preview" /> : <FileIcon size={28} />}
              <span class="tray-name">{p.file.name}</span>
              <span class="tray-size">{fileSize(p.file.size)}</span>
              <button class="tray-remove" title="Remove" aria-label={`Remove ${p.file.name}`} onClick={() => removeFile(p.key)} data-testid="tray-remove">
                <CloseIcon size={14} />
              </button>
            </div>
          ))}
        </div>
      )}
      <div class="compose-row">
        <button class="icon" title="Attach files" aria-label="Attach files" onClick={() => fileInput.current?.click()} disabled={draft.mode === "edit"} data-testid="attach">
          <AttachIcon />
        </button>
        <input
          type="file"
          ref={fileInput}
          hidden
          multiple
          data-testid="file-input"
          onChange={(e) => {
            addFiles(e.currentTarget.files);
            e.currentTarget.value = "";
          }}
        />
        <textarea
          ref={area}
          rows={1}
          value={text}
          placeholder={
            draft.mode === "edit"
              ? "Edit your message"
              : tray.length > 0
                ? "Add a caption, or just press Enter"
                : `Message ${conv.kind === "room" ? `#${conv.name}` : (conv.peer?.username ?? conv.name)}`
          }
          onInput={(e) => onInput(e.currentTarget.value, e.currentTarget.selectionStart ?? e.currentTarget.value.length)}
          onKeyDown={onKeyDown}
          onKeyUp={(e) => {
            if (e.key === "ArrowLeft" || e.key === "ArrowRight" || e.key === "Home" || e.key === "End") setCaret(e.currentTarget.selectionStart ?? 0);
          }}
          onClick={(e) => setCaret(e.currentTarget.selectionStart ?? 0)}
          onPaste={(e) => {
            if (e.clipboardData?.files.length) {
              e.preventDefault();
              addFiles(e.clipboardData.files);
            }
          }}
          aria-label="Message"
          data-testid="composer"
        />
        <button class="send" title="Send (Enter)" aria-label="Send" onClick={() => void submit()} disabled={!canSend} data-testid="send">
          <SendIcon />
        </button>
      </div>
      <p class="hint small">
        Enter to send · Shift+Enter for a new line · **bold** *italic* `code` · @ to mention
      </p>
    </div>
  );
}
