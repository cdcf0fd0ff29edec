// The left column: who I am on which device, the menu, the conversation list (unread counts,
// last message and time, presence dots), and the status line at the bottom.

import type { JSX } from "preact";
import { useEffect, useState } from "preact/hooks";
import type { ChatState } from "../model/chat";
import { listTime } from "../model/format";
import { lastActivity, peerOnline, preview, sortedConversations, statusLine, title, waitingCount } from "../model/view";
import type { Actions } from "./ChatScreen";
import { Avatar } from "./common";
import { ComposeIcon, DevicesIcon, HashIcon, LogoutIcon, MoreIcon, SearchIcon, ServerIcon, UsersIcon, WindowIcon } from "./icons";
import * as api from "../ipc/commands";

export function Sidebar({ state, actions }: { state: ChatState; actions: Actions }) {
  const [filter, setFilter] = useState("");
  const [menu, setMenu] = useState(false);
  const now = Date.now();
  const list = sortedConversations(state).filter((c) => title(c).toLowerCase().includes(filter.trim().toLowerCase()));

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
        <button class="icon" title="New chat" aria-label="New chat" onClick={() => actions.open("new_chat")} data-testid="new-chat">
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
              {item("New room", <HashIcon />, () => actions.open("new_room"), "menu-new-room")}
              {item("Browse public rooms", <UsersIcon />, () => actions.open("browse_rooms"), "menu-browse-rooms")}
              {item("My devices", <DevicesIcon />, () => actions.open("devices"), "menu-devices")}
              {item("Open another device", <WindowIcon />, () => void api.openDeviceWindow().catch(actions.fail), "menu-open-device")}
              {item("Cluster", <ServerIcon />, () => actions.open("cluster"), "menu-cluster")}
              <hr />
              {item("Sign out", <LogoutIcon />, () => actions.open("sign_out"), "menu-sign-out")}
            </div>
          )}
        </div>
      </header>
      <div class="search">
        <SearchIcon size={16} />
        <input placeholder="Search conversations" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} aria-label="Search conversations" />
      </div>
      <nav class="conv-list" aria-label="Conversations" data-testid="conversation-list">
        {list.length === 0 && <p class="muted pad">{filter ? "No match." : "No conversations yet. Start one with the pencil above."}</p>}
        {list.map((c) => (
          <button
            key={c.id}
            class={`conv${state.selected === c.id ? " selected" : ""}${c.unread > 0 ? " has-unread" : ""}`}
            onClick={() => actions.select(c.id)}
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
                {c.unread > 0 && (
                  <span class="badge" data-testid="unread" aria-label={`${c.unread} unread`}>
                    {c.unread > 99 ? "99+" : c.unread}
                  </span>
                )}
              </span>
            </span>
          </button>
        ))}
      </nav>
      <StatusBar state={state} />
    </aside>
  );
}

/** "● Connected · node n2": the connection truth, refreshed every second while it counts down. */
function StatusBar({ state }: { state: ChatState }) {
  const [since, setSince] = useState(Date.now());
  const [now, setNow] = useState(Date.now());
  useEffect(() => setSince(Date.now()), [state.status]);
  useEffect(() => {
    const timer = window.setInterval(() => setNow(Date.now()), 1000);
    return () => window.clearInterval(timer);
  }, []);
  const line = statusLine(state.status, state.server, waitingCount(state), now, since);
  return (
    <footer class={`status-line ${line.tone}`} data-testid="status-line" data-state={line.state} data-node={line.node ?? ""} role="status">
      <span class="dot" aria-hidden="true" />
      <span class="status-text">
        <span data-testid="status-text">{line.text}</span>
        {line.detail && <span class="status-detail">{line.detail}</span>}
      </span>
    </footer>
  );
}
