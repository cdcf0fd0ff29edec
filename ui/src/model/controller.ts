// The chat window's side effects, kept out of the components: every call to Rust, what it
// dispatches into the reducer, and the toasts that report it. Components read the state and
// call these methods; they never invoke a command themselves.
//
// Invariant: a method that changes what the timeline shows dispatches the local change as soon
// as Rust accepted the command (pending until its event or ack arrives), and an error becomes
// a toast or a failed row, never a silent drop.

import * as api from "../ipc/commands";
import type { ChatEvent, ConvId, ConversationSummary, MessageId, Seq, UiEvent } from "../ipc/types";
import type { Action, ChatState, Item } from "./chat";
import { fileSize } from "./format";
import { mentioned } from "./markup";
import { describeMessage, userName } from "./view";

export type Dispatch = (a: Action) => void;

export type Tone = "info" | "error";

/** A button on a toast ("Undo", "Retry now"). */
export interface ToastAction {
  label: string;
  run: () => void;
}

export interface Toast {
  id: number;
  text: string;
  tone: Tone;
  action?: ToastAction;
}

/** How long a toast stays, by tone. */
const TOAST_MS: Record<Tone, number> = { info: 4000, error: 7000 };

/** Pages of history read back at most to reach a message (50 events each). */
const JUMP_PAGES = 40;

/** How long a deleted message can be brought back before the delete is sent. */
export const UNDO_MS = 6000;

export class ChatController {
  /** Files kept until they are sent, so a failed upload can be retried. */
  private readonly uploads = new Map<string, { file: File; caption: string }>();
  private maxAttachment: Promise<number> | null = null;
  private nextToast = 1;
  /** Deletes waiting out their grace period, by message: the conversation and the timer. */
  private readonly deletes = new Map<MessageId, { conv: ConvId; timer: number }>();
  private title = "";

  constructor(
    private readonly dispatch: Dispatch,
    private readonly state: () => ChatState,
    private readonly setToasts: (f: (t: Toast[]) => Toast[]) => void,
  ) {}

  // -------------------------------------------------------------------------------------------
  // Toasts

  toast(text: string, tone: Tone = "info", action?: ToastAction, ms = TOAST_MS[tone]): number {
    const id = this.nextToast++;
    this.setToasts((t) => [...t.slice(-3), { id, text, tone, action }]);
    window.setTimeout(() => this.dismiss(id), ms);
    return id;
  }

  dismiss(id: number): void {
    this.setToasts((t) => t.filter((x) => x.id !== id));
  }

  /** Reports a failed command as an error toast. */
  readonly fail = (e: unknown): void => {
    this.toast(api.toAppError(e).message, "error");
  };

  // -------------------------------------------------------------------------------------------
  // Connection

  /** Connects the window's device; events arrive in the reducer. Events that come before the
   * snapshot are newer than it: they wait and are applied after it. Returns a cleanup. */
  connect(onReady: () => void, onSignedOut: (reason: string | null) => void): () => void {
    let alive = true;
    let early: UiEvent[] | null = [];
    let live = false;
    const onEvent = (event: UiEvent) => {
      if (!alive) return;
      if (event.type === "status") live = event.status === "live";
      // Replayed events (while resyncing) are history, not news: no notification.
      if (event.type === "event" && live) this.notifyIfUnseen(event);
      if (early) early.push(event);
      else this.dispatch({ type: "ui_event", event, now: Date.now() });
    };
    api.connect(onEvent).then(
      (snapshot) => {
        if (!alive) return;
        this.dispatch({ type: "snapshot", snapshot });
        for (const event of early ?? []) this.dispatch({ type: "ui_event", event, now: Date.now() });
        early = null;
        onReady();
        return api.serverState().then((state) => {
          if (alive) this.dispatch({ type: "ui_event", event: { type: "server", state }, now: Date.now() });
        });
      },
      (e) => {
        const err = api.toAppError(e);
        if (err.kind === "not_signed_in") onSignedOut(null);
        else this.toast(err.message, "error");
      },
    );
    return () => {
      alive = false;
    };
  }

  /** Ends the wait before the next reconnection attempt. */
  retryNow(): void {
    api.retryNow().catch(this.fail);
  }

  /** Keeps the native window title (task bar, window switcher) in step with the page's. */
  setTitle(title: string): void {
    document.title = title;
    if (title === this.title) return;
    this.title = title;
    api.setWindowTitle(title).catch(() => undefined);
  }

  /** A native notification for a message from someone else that this window is not showing:
   * any message while the window is not focused, and a mention of me in a conversation that
   * is not open. */
  private notifyIfUnseen(e: ChatEvent): void {
    const s = this.state();
    if (!s.me || e.sender === s.me.id || e.body.type !== "message" || e.body.deleted) return;
    const mentionsMe = mentioned(e.body.text).includes(s.me.username);
    const focused = document.hasFocus() && !document.hidden;
    if (focused && !(mentionsMe && s.selected !== e.conv)) return;
    const c = s.convs[e.conv];
    const who = userName(s, e.sender);
    const room = c?.kind === "room" ? `#${c.name}` : null;
    const title = mentionsMe ? `${who} mentioned you${room ? ` in ${room}` : ""}` : (room ?? who);
    const body = `${room && !mentionsMe ? `${who}: ` : ""}${describeMessage(e)}`;
    api.notify(title, body).catch(() => undefined);
  }

  // -------------------------------------------------------------------------------------------
  // Conversations

  select(conv: ConvId | null): void {
    this.dispatch({ type: "select", conv });
  }

  /** Shows a conversation the server just returned, and opens it. */
  private show(summary: ConversationSummary): void {
    this.dispatch({ type: "conversation", summary });
    this.select(summary.id);
  }

  /** Loads what an opened conversation needs: the cached events at once (offline too), the
   * server's latest page, and its members (names and read positions in rooms, presence
   * everywhere). Returns a cleanup that ignores answers arriving after it. */
  open(conv: ConvId): () => void {
    let alive = true;
    api.cachedEvents(conv).then((events) => alive && this.dispatch({ type: "cached", conv, events }), () => undefined);
    api.history(conv).then(
      (page) => alive && this.dispatch({ type: "history", conv, events: page.events, hasMore: page.has_more, older: false, offline: page.offline }),
      (e) => alive && this.fail(e),
    );
    this.refreshMembers(conv, () => alive);
    return () => {
      alive = false;
    };
  }

  refreshMembers(conv: ConvId, alive: () => boolean = () => true): void {
    api.members(conv).then((members) => alive() && this.dispatch({ type: "members", conv, members }), () => undefined);
  }

  loadOlder(conv: ConvId): void {
    const t = this.state().timelines[conv];
    if (!t || t.loadingOlder || !t.hasMore || !t.loaded) return;
    const oldest = t.items.find((it) => it.seq !== null)?.seq ?? null;
    if (oldest === null || oldest <= 1) return;
    this.dispatch({ type: "loading_older", conv, loading: true });
    api.history(conv, oldest).then(
      (page) => this.dispatch({ type: "history", conv, events: page.events, hasMore: page.has_more, older: true, offline: page.offline }),
      (e) => {
        this.dispatch({ type: "loading_older", conv, loading: false });
        this.fail(e);
      },
    );
  }

  /** Opens a conversation at one of its messages: reads history back until the message is
   * loaded (so the timeline stays without gaps), then the timeline brings it into view. */
  async jumpTo(conv: ConvId, seq: Seq): Promise<void> {
    this.select(conv);
    this.dispatch({ type: "focus", conv, seq });
    if (this.state().timelines[conv]?.items.some((it) => it.seq === seq)) return;
    try {
      let page = await api.history(conv);
      this.dispatch({ type: "history", conv, events: page.events, hasMore: page.has_more, older: false, offline: page.offline });
      for (let n = 0; n < JUMP_PAGES && page.has_more && !page.events.some((e) => e.seq <= seq); n++) {
        const oldest = page.events[0]?.seq;
        if (oldest === undefined) break;
        page = await api.history(conv, oldest);
        this.dispatch({ type: "history", conv, events: page.events, hasMore: page.has_more, older: true, offline: page.offline });
      }
    } catch (e) {
      this.fail(e);
    }
  }

  search = (query: string) => api.searchMessages(query);

  /** The message asked for is in view. */
  clearFocus(): void {
    if (this.state().focus) this.dispatch({ type: "focus", conv: 0, seq: null });
  }

  markRead(conv: ConvId, seq: Seq): void {
    this.dispatch({ type: "marked_read", conv, seq });
    api.markRead(conv, seq).catch(() => undefined);
  }

  async openDirect(username: string): Promise<void> {
    this.show(await api.openDirect(username));
  }

  async createRoom(name: string, isPublic: boolean, members: string[]): Promise<void> {
    this.show(await api.createRoom(name, isPublic, members));
  }

  async joinRoom(conv: ConvId): Promise<void> {
    this.show(await api.joinRoom(conv));
  }

  async leaveRoom(conv: ConvId): Promise<void> {
    await api.leaveRoom(conv);
    this.select(null);
  }

  invite = (conv: ConvId, username: string) => api.invite(conv, username);
  members = (conv: ConvId) => api.members(conv);
  publicRooms = (query: string) => api.publicRooms(query);

  // -------------------------------------------------------------------------------------------
  // Writing

  /** Sends a text message; throws (after a toast) when Rust refused it, so the composer
   * keeps the text. */
  async send(conv: ConvId, text: string, replyTo?: MessageId): Promise<void> {
    try {
      const clientId = await api.sendMessage(conv, text, replyTo);
      this.dispatch({ type: "local_send", conv, clientId, text, replyTo, at: Date.now() });
    } catch (e) {
      this.fail(e);
      throw e;
    }
  }

  /** The server's attachment size limit, asked once. */
  private limit(): Promise<number> {
    this.maxAttachment ??= api.serverInfo().then((i) => i.max_attachment_bytes);
    this.maxAttachment.catch(() => {
      this.maxAttachment = null;
    });
    return this.maxAttachment;
  }

  /** Uploads a file and sends it; the row shows it uploading, then as a message (or failed,
   * with the reason, and kept for a retry). */
  async upload(conv: ConvId, file: File, caption: string, key = `u${Date.now()}${Math.random().toString(36).slice(2)}`): Promise<void> {
    this.uploads.set(key, { file, caption });
    this.dispatch({ type: "local_upload", conv, key, name: file.name, caption, at: Date.now() });
    const limit = await this.limit().catch(() => null);
    if (limit !== null && file.size > limit) {
      // Explain the server's limit without reading the file at all.
      this.dispatch({ type: "local_failed", conv, key, message: `${file.name} is ${fileSize(file.size)}; this server accepts attachments up to ${fileSize(limit)}.` });
      return;
    }
    try {
      const clientId = await api.sendAttachment(conv, file, caption);
      this.dispatch({ type: "upload_sent", conv, key, clientId });
      this.uploads.delete(key);
    } catch (e) {
      this.dispatch({ type: "local_failed", conv, key, message: api.toAppError(e).message });
    }
  }

  /** Sends a failed message or upload again. */
  retry(conv: ConvId, it: Item): void {
    this.dispatch({ type: "discard", conv, key: it.key });
    const pending = this.uploads.get(it.key);
    if (pending) {
      this.uploads.delete(it.key);
      void this.upload(conv, pending.file, pending.caption);
    } else {
      void this.send(conv, it.text, it.replyTo).catch(() => undefined);
    }
  }

  discard(conv: ConvId, it: Item): void {
    this.uploads.delete(it.key);
    this.dispatch({ type: "discard", conv, key: it.key });
  }

  async edit(conv: ConvId, target: MessageId, text: string): Promise<void> {
    try {
      const clientId = await api.editMessage(conv, target, text);
      this.dispatch({ type: "local_edit", conv, target, text, clientId, at: Date.now() });
    } catch (e) {
      this.fail(e);
      throw e;
    }
  }

  /** Deletes one of my messages with a way back: it disappears at once, a toast offers
   * "Undo" for a few seconds, and only then is the delete sent to every device. */
  deleteWithUndo(conv: ConvId, target: MessageId): void {
    this.dispatch({ type: "hide", conv, target });
    const timer = window.setTimeout(() => {
      this.deletes.delete(target);
      void this.remove(conv, target);
    }, UNDO_MS);
    this.deletes.set(target, { conv, timer });
    this.toast("Message deleted", "info", { label: "Undo", run: () => this.undoDelete(target) }, UNDO_MS);
  }

  /** Brings back a message whose delete has not been sent yet. */
  undoDelete(target: MessageId): void {
    const pending = this.deletes.get(target);
    if (!pending) return;
    window.clearTimeout(pending.timer);
    this.deletes.delete(target);
    this.dispatch({ type: "unhide", target });
  }

  /** Sends at once the deletes still in their grace period (the window is going away). */
  flushDeletes(): void {
    for (const [target, { conv, timer }] of this.deletes) {
      window.clearTimeout(timer);
      void this.remove(conv, target);
    }
    this.deletes.clear();
  }

  async remove(conv: ConvId, target: MessageId): Promise<void> {
    try {
      const clientId = await api.deleteMessage(conv, target);
      this.dispatch({ type: "local_delete", conv, target, clientId });
    } catch (e) {
      this.fail(e);
    }
  }

  /** Gives or takes back my reaction to a message; every device of every member shows it
   * when its event comes back. */
  react(conv: ConvId, target: MessageId, emoji: string, on: boolean): void {
    api.react(conv, target, emoji, on).catch(this.fail);
  }

  typing(conv: ConvId, active: boolean): void {
    api.typing(conv, active).catch(() => undefined);
  }

  /** Opens a link of a message in the system's browser (or mail client). */
  openLink(href: string): void {
    api.openLink(href).catch(this.fail);
  }

  saveAttachment(id: string, name: string): void {
    api.saveAttachment(id, name).then(
      (path) => this.toast(`Saved to ${path}`),
      (e) => this.fail(e),
    );
  }

  // -------------------------------------------------------------------------------------------
  // Devices, cluster, session

  devices = () => api.devices();
  messageInfo = (id: MessageId) => api.messageInfo(id);

  async revokeDevice(id: string, name: string): Promise<void> {
    await api.revokeDevice(id);
    this.toast(`${name} was signed out.`);
  }

  openDeviceWindow(): Promise<void> {
    return api.openDeviceWindow().then(
      () => undefined,
      (e) => this.fail(e),
    );
  }

  clusterStatus = () => api.clusterStatus();
  killNode = (id: string) => api.killNode(id);
  restartNode = (id: string) => api.restartNode(id);
  forgetServer = () => api.forgetServer();

  async signOut(): Promise<void> {
    await api.logout();
    window.location.reload();
  }
}
