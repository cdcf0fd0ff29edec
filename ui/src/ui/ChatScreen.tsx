// The chat window once signed in: connects this window's device (events stream into the
// reducer), and lays out the sidebar, the open conversation, the dialogs and the toasts.

import { useCallback, useEffect, useReducer, useRef, useState } from "preact/hooks";
import * as api from "../ipc/commands";
import type { Boot, ConversationSummary, UiEvent } from "../ipc/types";
import { initialState, reduce } from "../model/chat";
import { title, totalUnread } from "../model/view";
import { type Toast, Toasts } from "./common";
import { Conversation } from "./Conversation";
import { type DialogName, Dialogs } from "./dialogs";
import { Sidebar } from "./Sidebar";

export interface Actions {
  toast: (text: string, tone?: "info" | "error") => void;
  fail: (e: unknown) => void;
  open: (dialog: DialogName) => void;
  select: (conv: number | null) => void;
  upsert: (summary: ConversationSummary) => void;
}

export function ChatScreen({ boot, onSignedOut }: { boot: Boot; onSignedOut: (reason: string | null) => void }) {
  const [state, dispatch] = useReducer(reduce, undefined, initialState);
  const [connected, setConnected] = useState(false);
  const [dialog, setDialog] = useState<DialogName | null>(null);
  const [toasts, setToasts] = useState<Toast[]>([]);
  const nextToast = useRef(1);

  const toast = useCallback((text: string, tone: "info" | "error" = "info") => {
    const id = nextToast.current++;
    setToasts((t) => [...t.slice(-3), { id, text, tone }]);
    window.setTimeout(() => setToasts((t) => t.filter((x) => x.id !== id)), tone === "error" ? 7000 : 4000);
  }, []);

  const actions: Actions = {
    toast,
    fail: (e) => toast(api.toAppError(e).message, "error"),
    open: setDialog,
    select: (conv) => dispatch({ type: "select", conv }),
    upsert: (summary) => dispatch({ type: "conversation", summary }),
  };

  // Connect once; a reload of the window connects again and gets a fresh snapshot. Events can
  // arrive before the snapshot does (the connection starts inside `connect`): they are newer
  // than it, so they wait and are applied after it.
  useEffect(() => {
    let alive = true;
    let early: UiEvent[] | null = [];
    const onEvent = (event: UiEvent) => {
      if (!alive) return;
      if (early) early.push(event);
      else dispatch({ type: "ui_event", event, now: Date.now() });
    };
    api.connect(onEvent).then(
      (snapshot) => {
        if (!alive) return;
        dispatch({ type: "snapshot", snapshot });
        for (const event of early ?? []) dispatch({ type: "ui_event", event, now: Date.now() });
        early = null;
        setConnected(true);
        return api.serverState().then((state) => {
          if (alive) dispatch({ type: "ui_event", event: { type: "server", state }, now: Date.now() });
        });
      },
      (e) => {
        const err = api.toAppError(e);
        if (err.kind === "not_signed_in") onSignedOut(null);
        else toast(err.message, "error");
      },
    );
    return () => {
      alive = false;
    };
  }, []);

  useEffect(() => {
    if (state.signedOut !== null) onSignedOut(`Signed out: ${state.signedOut}`);
  }, [state.signedOut]);

  useEffect(() => {
    if (state.notice) {
      toast(state.notice.text, "error");
      dispatch({ type: "dismiss_notice" });
    }
  }, [state.notice]);

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
    document.title = `${unread > 0 ? `(${unread}) ` : ""}${open ? `${title(open)} — ` : ""}Cluster Chat${who ? ` — ${who}` : ""}`;
  }, [state.convs, state.selected, state.me]);

  const selected = state.selected !== null ? state.convs[state.selected] : undefined;

  return (
    <div class="chat-screen" data-testid="chat-screen" data-user={state.me?.username ?? ""} data-ready={String(connected)}>
      <Sidebar state={state} actions={actions} />
      <main class="pane">
        {selected ? (
          <Conversation key={selected.id} conv={selected} state={state} dispatch={dispatch} actions={actions} />
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
      {dialog && <Dialogs name={dialog} state={state} actions={actions} onClose={() => setDialog(null)} />}
      <Toasts toasts={toasts} onDismiss={(id) => setToasts((t) => t.filter((x) => x.id !== id))} />
    </div>
  );
}
