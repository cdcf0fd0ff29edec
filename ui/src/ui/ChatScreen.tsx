// The chat window once signed in: holds the state (the reducer) and the controller that does
// its side effects, and lays out the sidebar, the open conversation, the dialogs and the toasts.

import { useEffect, useMemo, useReducer, useRef, useState } from "preact/hooks";
import { initialState, reduce } from "../model/chat";
import { ChatController, type Toast } from "../model/controller";
import { title, totalUnread } from "../model/view";
import { Toasts } from "./common";
import { Conversation } from "./Conversation";
import { type DialogName, Dialogs } from "./dialogs";
import { Sidebar } from "./Sidebar";

export function ChatScreen({ onSignedOut }: { onSignedOut: (reason: string | null) => void }) {
  const [state, dispatch] = useReducer(reduce, undefined, initialState);
  const [connected, setConnected] = useState(false);
  const [dialog, setDialog] = useState<DialogName | null>(null);
  const [toasts, setToasts] = useState<Toast[]>([]);
  const latest = useRef(state);
  latest.current = state;
  const chat = useMemo(() => new ChatController(dispatch, () => latest.current, setToasts), []);

  // Connect once; a reload of the window connects again and gets a fresh snapshot.
  useEffect(() => chat.connect(() => setConnected(true), onSignedOut), []);

  useEffect(() => {
    if (state.signedOut !== null) onSignedOut(`Signed out: ${state.signedOut}`);
  }, [state.signedOut]);

  useEffect(() => {
    if (state.notices.length === 0) return;
    for (const n of state.notices) chat.toast(n.text, n.tone);
    dispatch({ type: "notices_shown" });
  }, [state.notices]);

  // A delete still in its grace period goes out if the window closes or reloads.
  useEffect(() => {
    const flush = () => chat.flushDeletes();
    window.addEventListener("pagehide", flush);
    return () => window.removeEventListener("pagehide", flush);
  }, []);

  // Typing indicators expire on their own.
  useEffect(() => {
    const timer = window.setInterval(() => dispatch({ type: "tick", now: Date.now() }), 1000);
    return () => window.clearInterval(timer);
  }, []);

  // The window title carries the unread count, like other chat apps.
  useEffect(() => {
    const unread = totalUnread(state);
    const who = state.me ? `${state.me.username} · ${state.deviceName}` : "";
    const open = state.selected !== null ? state.convs[state.selected] : undefined;
    chat.setTitle(`${unread > 0 ? `(${unread}) ` : ""}${open ? `${title(open)} — ` : ""}Cluster Chat${who ? ` — ${who}` : ""}`);
  }, [state.convs, state.selected, state.me]);

  const selected = state.selected !== null ? state.convs[state.selected] : undefined;

  return (
    <div class="chat-screen" data-testid="chat-screen" data-user={state.me?.username ?? ""} data-ready={String(connected)}>
      <Sidebar state={state} chat={chat} open={setDialog} />
      <main class="pane">
        {selected ? (
          <Conversation key={selected.id} conv={selected} state={state} chat={chat} open={setDialog} />
        ) : (
          <div class="empty-pane">
            <div>
              <span class="logo big" aria-hidden="true" />
              <h2>{Object.keys(state.convs).length === 0 ? "No conversations yet" : "Pick a conversation"}</h2>
              <p class="muted">Start a direct chat by username, or create or join a room.</p>
              <div class="row center">
                <button class="primary" onClick={() => setDialog("new_chat")} data-testid="empty-new-chat">
                  New chat
                </button>
                <button class="secondary" onClick={() => setDialog("browse_rooms")}>
                  Browse rooms
                </button>
              </div>
            </div>
          </div>
        )}
      </main>
      {dialog && <Dialogs name={dialog} state={state} chat={chat} onClose={() => setDialog(null)} />}
      <Toasts toasts={toasts} onDismiss={(id) => chat.dismiss(id)} />
    </div>
  );
}
