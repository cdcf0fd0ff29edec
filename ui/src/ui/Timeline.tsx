// The message list: day separators, sender groups, bubbles with replies, attachments (images
// inline, files to save), edit/delete marks and message states; loads older history when
// scrolled to the top, and keeps the bottom in view when new messages arrive there.

import type { RefObject } from "preact";
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { attachmentUrl } from "../ipc/commands";
import type { ConversationSummary, Seq } from "../ipc/types";
import type { ChatState, Item, Timeline as TimelineState } from "../model/chat";
import type { ChatController } from "../model/controller";
import { clock, fileSize, hue } from "../model/format";
import { mentioned } from "../model/markup";
import { lastSeq, mark, quote, rows, userName } from "../model/view";
import { Rich } from "./Rich";
import { Avatar } from "./common";
import { AlertIcon, ClockIcon, DownIcon, CheckIcon, DoubleCheckIcon, DownloadIcon, EditIcon, FileIcon, InfoIcon, ReplyIcon, SmileIcon, TrashIcon } from "./icons";

interface Props {
  conv: ConversationSummary;
  state: ChatState;
  timeline: TimelineState;
  atBottom: RefObject<boolean>;
  onBottom: () => void;
  onTop: () => void;
  onReply: (it: Item) => void;
  onEdit: (it: Item) => void;
  onDelete: (it: Item) => void;
  /** Opens a message's info (sender device, origin node, seq, id, arrivals on my devices). */
  onInfo: (it: Item) => void;
  /** Where the "new messages" line goes (the first unread when the conversation opened). */
  unreadFrom: Seq | null;
  chat: ChatController;
}

/** Whether the end of the timeline is in view (give or take a line). */
function atTheBottom(el: HTMLElement): boolean {
  return el.scrollHeight - el.scrollTop - el.clientHeight < 48;
}

export function Timeline(p: Props) {
  const scroller = useRef<HTMLDivElement>(null);
  const before = useRef<{ height: number; top: number; first: string | undefined } | null>(null);
  const now = Date.now();
  const list = rows(p.state, p.timeline.items, now, p.unreadFrom);
  const firstKey = p.timeline.items[0]?.key;
  const positioned = useRef(false);
  // Scrolled up: how far the conversation has gone on below (the "jump to latest" button).
  const [away, setAway] = useState<{ seq: number } | null>(null);

  // Keep the view steady: open at the first unread message (the "new messages" line) or at the
  // bottom; then stick to the bottom if it was there; when older messages were added above,
  // keep what was on screen where it was.
  useLayoutEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const prev = before.current;
    const divider = el.querySelector<HTMLElement>('[data-testid="unread-line"]');
    if (!positioned.current && p.timeline.loaded) {
      positioned.current = true;
      if (divider && divider.offsetTop + 60 < el.scrollHeight - el.clientHeight) {
        el.scrollTop = divider.offsetTop - 60;
        p.atBottom.current = false;
        setAway({ seq: lastSeq(p.timeline.items) });
      } else {
        el.scrollTop = el.scrollHeight;
      }
    } else if (prev && prev.first !== firstKey && prev.first !== undefined) {
      el.scrollTop = prev.top + (el.scrollHeight - prev.height);
    } else if (p.atBottom.current) {
      el.scrollTop = el.scrollHeight;
    }
    before.current = { height: el.scrollHeight, top: el.scrollTop, first: firstKey };
    // Whether the bottom is in view is a fact of the layout, not of the last scroll: a short
    // conversation has no scroll at all.
    p.atBottom.current = atTheBottom(el);
    if (p.atBottom.current && away) setAway(null);
  });
  const newBelow = away ? p.timeline.items.filter((it) => it.seq !== null && it.seq > away.seq && it.kind === "message" && it.sender !== p.state.me?.id).length : 0;
  const toBottom = () => {
    const el = scroller.current;
    if (el) el.scrollTo({ top: el.scrollHeight, behavior: "smooth" });
  };

  // A message asked for (a search hit): once it is drawn, bring it into view and flash it.
  const [flash, setFlash] = useState<number | null>(null);
  const focus = p.state.focus?.conv === p.conv.id ? p.state.focus.seq : null;
  useLayoutEffect(() => {
    if (focus === null) return;
    const el = scroller.current?.querySelector<HTMLElement>(`[data-testid="message"][data-seq="${focus}"]`);
    if (!el) return;
    el.scrollIntoView({ block: "center" });
    if (scroller.current) p.atBottom.current = atTheBottom(scroller.current);
    setFlash(focus);
    p.chat.clearFocus();
  }, [focus, p.timeline.items]);
  useEffect(() => {
    if (flash === null) return;
    const timer = window.setTimeout(() => setFlash(null), 2500);
    return () => window.clearTimeout(timer);
  }, [flash]);

  const onScroll = () => {
    const el = scroller.current;
    if (!el) return;
    const bottom = atTheBottom(el);
    p.atBottom.current = bottom;
    if (bottom !== (away === null)) setAway(bottom ? null : { seq: lastSeq(p.timeline.items) });
    before.current = { height: el.scrollHeight, top: el.scrollTop, first: firstKey };
    if (bottom) p.onBottom();
    if (el.scrollTop < 160) p.onTop();
  };

  return (
    <div class="timeline-wrap">
      <div class="timeline" ref={scroller} onScroll={onScroll} data-testid="timeline">
        <div class="timeline-top">
          {p.timeline.loadingOlder ? (
            <span class="muted small">Loading older messages…</span>
          ) : !p.timeline.hasMore && p.timeline.loaded ? (
            <span class="muted small">This is the beginning of the conversation.</span>
          ) : p.timeline.loaded ? (
            <button class="link small" onClick={p.onTop}>
              Load older messages
            </button>
          ) : (
            <span class="muted small">Loading…</span>
          )}
        </div>
        {list.map((row) => {
          switch (row.type) {
            case "day":
              return (
                <div key={row.key} class="day">
                  <span>{row.label}</span>
                </div>
              );
            case "system":
              return (
                <div key={row.key} class="system" data-testid="system-line">
                  {row.text}
                </div>
              );
            case "unread":
              return (
                <div key={row.key} class="unread-line" data-testid="unread-line" role="separator">
                  <span>New messages</span>
                </div>
              );
            case "message":
              return <Bubble key={row.key} row={row} flash={row.item.seq !== null && row.item.seq === flash} {...p} />;
          }
        })}
      </div>
      {away && (
        <button class={`jump${newBelow > 0 ? " has-new" : ""}`} onClick={toBottom} data-testid="jump-to-latest" title="Jump to the latest message">
          {newBelow > 0 ? `${newBelow} new` : ""}
          <DownIcon size={18} />
        </button>
      )}
    </div>
  );
}

/** The reactions offered under a message's "React" button. */
export const QUICK_REACTIONS = ["👍", "❤️", "😂", "🎉", "😮", "😢"];

function Bubble({ row, flash, conv, state, onReply, onEdit, onDelete, onInfo, chat }: Props & { row: Extract<ReturnType<typeof rows>[number], { type: "message" }>; flash: boolean }) {
  const it = row.item;
  const showName = conv.kind === "room" && !row.mine && row.first;
  const q = it.replyTo && !it.deleted ? quote(state, conv.id, it.replyTo) : null;
  const m = row.mine ? mark(state, conv.id, it) : null;
  const canAct = it.state === "sent" && it.id !== null && !it.deleted;
  const mentionsMe = !row.mine && state.me !== null && mentioned(it.text).includes(state.me.username);
  const name = userName(state, it.sender);
  // In rooms, others' messages carry their avatar (on the last bubble of a run, as in other
  // chat apps); direct conversations have the peer's in the header.
  const avatar = conv.kind === "room" && !row.mine;
  const [picking, setPicking] = useState(false);
  const me = state.me?.id;
  const react = (emoji: string, on: boolean) => {
    setPicking(false);
    if (it.id) chat.react(conv.id, it.id, emoji, on);
  };
  const reactions = it.deleted ? [] : (it.reactions ?? []);
  return (
    <div
      class={`msg ${row.mine ? "mine" : "theirs"}${row.first ? " first" : ""}${row.last ? " last" : ""} ${it.state}${flash ? " flash" : ""}${mentionsMe ? " mentions-me" : ""}${avatar ? " with-avatar" : ""}`}
      data-testid="message"
      data-key={it.key}
      data-seq={it.seq ?? ""}
      data-state={it.state}
      data-mark={m ?? ""}
      data-sender={name}
    >
      {avatar && row.last && (
        <span class="msg-avatar" data-testid="message-avatar">
          <Avatar name={name} size={30} />
        </span>
      )}
      <div class="bubble">
        {showName && (
          <div class="sender" style={{ "--h": hue(name) }}>
            {name}
          </div>
        )}
        {q && (
          <div class="quote">
            <strong>{q.who}</strong>
            <span>{q.text}</span>
          </div>
        )}
        {it.deleted ? (
          <p class="text deleted">This message was deleted.</p>
        ) : (
          <>
            {it.attachment && <AttachmentView attachment={it.attachment} chat={chat} />}
            {it.uploadName && !it.attachment && (
              <div class="file uploading">
                <FileIcon />
                <span>
                  {it.uploadName}
                  <span class="muted small">{it.state === "failed" ? " · not sent" : " · uploading…"}</span>
                </span>
              </div>
            )}
            {it.text && (
              <p class="text" data-testid="message-text">
                <Rich text={it.text} me={state.me?.username ?? null} onLink={(href) => chat.openLink(href)} />
              </p>
            )}
          </>
        )}
        <div class="meta">
          {it.editedAt && !it.deleted && <span class="edited">edited</span>}
          <span class="time">{clock(it.at)}</span>
          {m === "pending" && (
            <span class="mark" title="Waiting to send" data-testid="mark-pending">
              <ClockIcon size={13} />
            </span>
          )}
          {m === "sent" && (
            <span class="mark" title="Sent">
              <CheckIcon size={13} />
            </span>
          )}
          {m === "read" && (
            <span class="mark read" title="Read">
              <DoubleCheckIcon size={14} />
            </span>
          )}
        </div>
      </div>
      {reactions.length > 0 && (
        <div class="reactions" data-testid="reactions">
          {reactions.map((r) => {
            const mine = me !== undefined && r.users.includes(me);
            return (
              <button
                key={r.emoji}
                class={`reaction${mine ? " mine" : ""}`}
                data-testid="reaction"
                data-emoji={r.emoji}
                data-count={r.users.length}
                data-mine={String(mine)}
                title={r.users.map((u) => userName(state, u)).join(", ")}
                onClick={() => react(r.emoji, !mine)}
              >
                <span class="emoji">{r.emoji}</span>
                <span class="count">{r.users.length}</span>
              </button>
            );
          })}
        </div>
      )}
      {picking && canAct && (
        <div class="react-picker" role="menu" data-testid="react-picker">
          {QUICK_REACTIONS.map((emoji) => (
            <button key={emoji} class="icon small" role="menuitem" data-testid="react-option" data-emoji={emoji} onClick={() => react(emoji, !(me !== undefined && reactions.some((r) => r.emoji === emoji && r.users.includes(me))))}>
              {emoji}
            </button>
          ))}
        </div>
      )}
      {it.state === "failed" && (
        <div class="failed-line" role="alert">
          <AlertIcon size={14} />
          <span>Not sent{it.error ? `: ${it.error}` : ""}</span>
          <button class="link" onClick={() => chat.retry(conv.id, it)} data-testid="retry">
            Retry
          </button>
          <button class="link" onClick={() => chat.discard(conv.id, it)}>
            Discard
          </button>
        </div>
      )}
      {canAct && (
        <div class="actions" role="toolbar" aria-label="Message actions">
          <button class="icon small" title="React" aria-label="React" onClick={() => setPicking(!picking)} data-testid="react">
            <SmileIcon size={16} />
          </button>
          <button class="icon small" title="Reply" aria-label="Reply" onClick={() => onReply(it)} data-testid="reply">
            <ReplyIcon size={16} />
          </button>
          {row.mine && !it.attachment && (
            <button class="icon small" title="Edit" aria-label="Edit" onClick={() => onEdit(it)} data-testid="edit">
              <EditIcon size={16} />
            </button>
          )}
          {row.mine && (
            <button class="icon small" title="Delete" aria-label="Delete" onClick={() => onDelete(it)} data-testid="delete">
              <TrashIcon size={16} />
            </button>
          )}
          <button class="icon small" title="Message info" aria-label="Message info" onClick={() => onInfo(it)} data-testid="info">
            <InfoIcon size={16} />
          </button>
        </div>
      )}
    </div>
  );
}

function AttachmentView({ attachment, chat }: { attachment: NonNullable<Item["attachment"]>; chat: ChatController }) {
  const [broken, setBroken] = useState(false);
  const save = () => chat.saveAttachment(attachment.id, attachment.name);
  if (attachment.mime.startsWith("image/") && !broken) {
    return (
      <figure class="image">
        <img src={attachmentUrl(attachment.id)} alt={attachment.name} loading="lazy" onError={() => setBroken(true)} onDblClick={save} data-testid="image" />
        <figcaption>
          <span>{attachment.name}</span>
          <button class="icon small" title="Save to Downloads" aria-label="Save to Downloads" onClick={save}>
            <DownloadIcon size={15} />
          </button>
        </figcaption>
      </figure>
    );
  }
  return (
    <div class="file" data-testid="file">
      <FileIcon />
      <span class="file-name">
        {attachment.name}
        <span class="muted small"> · {fileSize(attachment.size)}</span>
      </span>
      <button class="icon small" title="Save to Downloads" aria-label="Save to Downloads" onClick={save} data-testid="save-file">
        <DownloadIcon size={16} />
      </button>
    </div>
  );
}
