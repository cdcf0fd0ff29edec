// The left column: who I am on which device, the menu, the conversation list (unread counts,
// last message and time, presence dots), and the status line at the bottom.

import type { JSX } from "preact";
import { useEffect, useState } from "preact/hooks";
import type { ChatState } from "../model/chat";
import { listTime } from "../model/format";
import type { SearchHit } from "../ipc/types";
import { lastActivity, peerOnline, preview, snippetParts, sortedConversations, statusLine, title, userName, waitingCount } from "../model/view";
import type { ChatController } from "../model/controller";
import { Avatar } from "./common";
import type { DialogName } from "./dialogs";
import { ComposeIcon, DevicesIcon, HashIcon, LogoutIcon, MoreIcon, SearchIcon, ServerIcon, UsersIcon, WindowIcon } from "./icons";

/** Characters typed before messages are searched too. */
const SEARCH_FROM = 2;

export function Sidebar({ state, chat, open }: { state: ChatState; chat: ChatController; open: (d: DialogName) => void }) {
  const [filter, setFilter] = useState("");
  const [hits, setHits] = useState<SearchHit[] | null>(null);
  const [menu, setMenu] = useState(false);
  const now = Date.now();
  const query = filter.trim();
  const list = sortedConversations(state).filter((c) => title(c).toLowerCase().includes(query.toLowerCase()));

  // Messages too, in every conversation this device has, once a word is typed.
  useEffect(() => {
    if (query.length < SEARCH_FROM) {
      setHits(null);
      return;
    }
    let alive = true;
    const timer = window.setTimeout(() => chat.search(query).then((h) => alive && setHits(h), chat.fail), 150);
    return () => {
      alive = false;
      window.clearTimeout(timer);
    };
  }, [query]);

  useEffect(() => {
    if (!menu) return;
    const close = () => setMenu(false);
    window.addEventListener("click", close);
    return () => window.removeEventListener("click", close);
  }, [menu]);

  const item = (label: string, icon: JSX.Element, run: () => void, testid: string) => (
    <button
      role="menuitem"
      data-testid={testid}
      onClick={(e) => {
        e.stopPropagation();
        setMenu(false);
        run();
      }}
    >
      {icon}
      {label}
    </button>
  );

  return (
    <aside class="sidebar">
      <header class="me">
        {state.me && <Avatar name={state.me.username} size={36} />}
        <div class="who">
          <strong data-testid="me">{state.me?.username ?? "…"}</strong>
          <span class="muted small" title="This device">{state.deviceName}</span>
        </div>
        <button class="icon" title="New chat" aria-label="New chat" onClick={() => open("new_chat")} data-testid="new-chat">
          <ComposeIcon />
        </button>
        <div class="menu-anchor">
          <button
            class="icon"
            title="More"
            aria-label="More"
            aria-haspopup="menu"
            aria-expanded={menu}
            data-testid="menu"
            onClick={(e) => {
              e.stopPropagation();
              setMenu(!menu);
            }}
          >
            <MoreIcon />
          </button>
          {menu && (
            <div class="menu" role="menu">
              {item("New room", <HashIcon />, () => open("new_room"), "menu-new-room")}
              {item("Browse public rooms", <UsersIcon />, () => open("browse_rooms"), "menu-browse-rooms")}
              {item("My devices", <DevicesIcon />, () => open("devices"), "menu-devices")}
              {item("Open another device", <WindowIcon />, () => void chat.openDeviceWindow(), "menu-open-device")}
              {item("Cluster", <ServerIcon />, () => open("cluster"), "menu-cluster")}
              <hr />
              {item("Sign out", <LogoutIcon />, () => open("sign_out"), "menu-sign-out")}
            </div>
          )}
        </div>
      </header>
      <div class="search">
        <SearchIcon size={16} />
        <input placeholder="Search conversations and messages" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} onKeyDown={(e) => e.key === "Escape" && setFilter("")} aria-label="Search" data-testid="search" />
      </div>
      <nav class="conv-list" aria-label="Conversations" data-testid="conversation-list">
        {list.length === 0 && !hits?.length && <p class="muted pad">{filter ? "No match." : "No conversations yet. Start one with the pencil above."}</p>}
        {list.map((c) => (
          <button
            key={c.id}
            class={`conv${state.selected === c.id ? " selected" : ""}${c.unread > 0 ? " has-unread" : ""}`}
            onClick={() => chat.select(c.id)}
            data-testid="conversation"
            data-conv={c.id}
            data-title={title(c)}
            data-unread={c.unread}
          >
            <Avatar name={title(c)} online={peerOnline(state, c)} room={c.kind === "room"} />
            <span class="conv-text">
              <span class="conv-top">
                <span class="conv-title">
                  {c.kind === "room" && <HashIcon size={14} />}
                  {title(c)}
                </span>
                <span class="conv-time">{listTime(lastActivity(c), now)}</span>
              </span>
              <span class="conv-bottom">
                <span class="conv-preview">{preview(state, c)}</span>
                {(state.mentions[c.id] ?? 0) > 0 && (
                  <span class="badge mention-badge" data-testid="mention-badge" title="You were mentioned" aria-label="You were mentioned">
                    @
                  </span>
                )}
                {c.unread > 0 && (
                  <span class="badge" data-testid="unread" aria-label={`${c.unread} unread`}>
                    {c.unread > 99 ? "99+" : c.unread}
                  </span>
                )}
              </span>
            </span>
          </button>
        ))}
        {hits && hits.length > 0 && (
          <section class="hits" data-testid="search-results" aria-label="Messages found">
            <h3>Messages</h3>
            {hits.map((h) => {
              const c = state.convs[h.event.conv];
              return (
                <button
                  key={`${h.event.conv}-${h.event.seq}`}
                  class="hit"
                  data-testid="search-hit"
                  data-conv={h.event.conv}
                  data-seq={h.event.seq}
                  onClick={() => {
                    setFilter("");
                    void chat.jumpTo(h.event.conv, h.event.seq);
                  }}
                >
                  <span class="conv-top">
                    <span class="conv-title">{c ? title(c) : "A conversation"}</span>
                    <span class="conv-time">{listTime(h.event.at, now)}</span>
                  </span>
                  <span class="hit-text">
                    <strong>{userName(state, h.event.sender)}: </strong>
                    {snippetParts(h.snippet).map((p, i) => (p.match ? <mark key={i}>{p.text}</mark> : p.text))}
                  </span>
                </button>
              );
            })}
          </section>
        )}
        {hits && hits.length === 0 && list.length > 0 && <p class="muted pad small">No message matches.</p>}
      </nav>
      <StatusBar state={state} chat={chat} />
    </aside>
  );
}

/** "● Connected · node n2": the connection truth, refreshed every second while it counts down. */
function StatusBar({ state, chat }: { state: ChatState; chat: ChatController }) {
  const [since, setSince] = useState(Date.now());
  const [now, setNow] = useState(Date.now());
  useEffect(() => setSince(Date.now()), [state.status]);
  useEffect(() => {
    const timer = window.setInterval(() => setNow(Date.now()), 1000);
    return () => window.clearInterval(timer);
  }, []);
  const line = statusLine(state.status, state.server, waitingCount(state), now, since);
  const backoff = state.status.status === "reconnecting" ? state.status : null;
  return (
    <footer
      class={`status-line ${line.tone}`}
      data-testid="status-line"
      data-state={line.state}
      data-node={line.node ?? ""}
      data-attempt={backoff?.attempt ?? ""}
      data-in-ms={backoff?.in_ms ?? ""}
      role="status"
    >
      <span class="dot" aria-hidden="true" />
      <span class="status-text">
        <span data-testid="status-text">{line.text}</span>
        {line.detail && <span class="status-detail">{line.detail}</span>}
      </span>
      {state.status.status === "reconnecting" && (
        <button class="secondary small" onClick={() => chat.retryNow()} data-testid="retry-now" title="Try to reconnect now instead of waiting">
          Retry now
        </button>
      )}
    </footer>
  );
}
