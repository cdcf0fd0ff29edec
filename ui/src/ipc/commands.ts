// Typed wrappers over the app's Tauri commands (`src-tauri/src/commands.rs`). Nothing else in
// the UI calls `invoke`; every failure is rethrown as an `AppError` ({ kind, message }).

import { Channel, invoke } from "@tauri-apps/api/core";
import type {
  AppError,
  Boot,
  ChatEvent,
  ClusterView,
  ConvId,
  ConversationSummary,
  DeviceView,
  HistoryView,
  MemberInfo,
  MessageInfo,
  MessageId,
  RoomListing,
  SearchHit,
  Seq,
  ServerChoice,
  ServerInfo,
  ServerState,
  SessionView,
  Snapshot,
  UiEvent,
  UserInfo,
} from "./types";

/** Whether a thrown value is one of the app's errors. */
export function isAppError(e: unknown): e is AppError {
  return typeof e === "object" && e !== null && "kind" in e && "message" in e;
}

/** Any thrown value as an AppError (a bridge failure becomes `{ kind: "internal" }`). */
export function toAppError(e: unknown): AppError {
  if (isAppError(e)) return e;
  return { kind: "internal", message: e instanceof Error ? e.message : String(e) };
}

async function call<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
  try {
    return await invoke<T>(cmd, args);
  } catch (e) {
    throw toAppError(e);
  }
}

export const bootstrap = () => call<Boot>("bootstrap");
export const chooseServer = (choice: ServerChoice) => call<ServerState>("choose_server", { choice });
export const forgetServer = () => call<void>("forget_server");
export const serverState = () => call<ServerState>("server_state");
export const serverInfo = () => call<ServerInfo>("server_info");

export const register = (username: string, password: string) =>
  call<UserInfo>("register", { username, password });
export const login = (username: string, password: string, deviceName: string) =>
  call<SessionView>("login", { username, password, deviceName });
export const logout = () => call<void>("logout");

/** Starts (or re-attaches) this window's connection; events arrive on `onEvent`. */
export function connect(onEvent: (event: UiEvent) => void): Promise<Snapshot> {
  const channel = new Channel<UiEvent>();
  channel.onmessage = onEvent;
  return call<Snapshot>("connect", { onEvent: channel });
}

/** Ends this window's wait between reconnection attempts now. */
export const retryNow = () => call<void>("retry_now");
/** Sets the window's native title (task bar, window switcher). */
export const setWindowTitle = (title: string) => call<void>("set_window_title", { title });

/** Shows a native notification. */
export const notify = (title: string, body: string) => call<void>("notify", { title, body });

export const sendMessage = (conv: ConvId, text: string, replyTo?: MessageId) =>
  call<string>("send_message", { conv, text, replyTo: replyTo ?? null });
export const editMessage = (conv: ConvId, target: MessageId, text: string) =>
  call<string>("edit_message", { conv, target, text });
export const deleteMessage = (conv: ConvId, target: MessageId) =>
  call<string>("delete_message", { conv, target });
/** Gives (`on`) or takes back my reaction `emoji` to a message. */
export const react = (conv: ConvId, target: MessageId, emoji: string, on: boolean) =>
  call<string>("react", { conv, target, emoji, on });
export const typing = (conv: ConvId, active: boolean) => call<void>("typing", { conv, active });
export const markRead = (conv: ConvId, seq: Seq) => call<void>("mark_read", { conv, seq });

/** Uploads a file and sends it as a message; returns the message's client id. */
export async function sendAttachment(conv: ConvId, file: File, caption: string): Promise<string> {
  const bytes = new Uint8Array(await file.arrayBuffer());
  try {
    return await invoke<string>("send_attachment", bytes, {
      headers: {
        "x-conv": String(conv),
        "x-name": encodeURIComponent(file.name || "file"),
        "x-mime": file.type,
        "x-caption": encodeURIComponent(caption),
      },
    });
  } catch (e) {
    throw toAppError(e);
  }
}

/** Opens an http(s) or mailto link outside the app. */
export const openLink = (url: string) => call<void>("open_link", { url });
export const saveAttachment = (id: string, name: string) =>
  call<string>("save_attachment", { id, name });

/** The URL an `<img>` uses to show an attachment (served by Rust with this window's token). */
export function attachmentUrl(id: string): string {
  const windows = navigator.userAgent.includes("Windows");
  return windows ? `http://attachment.localhost/${id}` : `attachment://localhost/${id}`;
}

export const history = (conv: ConvId, before?: Seq) =>
  call<HistoryView>("history", { conv, before: before ?? null });
export const searchMessages = (query: string) => call<SearchHit[]>("search_messages", { query });
/** A message's id, seq, sender device, origin node, and when each of my devices here got it. */
export const messageInfo = (id: MessageId) => call<MessageInfo>("message_info", { id });
export const cachedEvents = (conv: ConvId) => call<ChatEvent[]>("cached_events", { conv });
export const conversations = () => call<ConversationSummary[]>("conversations");
export const conversation = (conv: ConvId) => call<ConversationSummary>("conversation", { conv });
export const members = (conv: ConvId) => call<MemberInfo[]>("members", { conv });
export const openDirect = (username: string) => call<ConversationSummary>("open_direct", { username });
export const createRoom = (name: string, isPublic: boolean, memberNames: string[]) =>
  call<ConversationSummary>("create_room", { name, public: isPublic, members: memberNames });
export const publicRooms = (query?: string) =>
  call<RoomListing[]>("public_rooms", { query: query ?? null });
export const joinRoom = (conv: ConvId) => call<ConversationSummary>("join_room", { conv });
export const leaveRoom = (conv: ConvId) => call<void>("leave_room", { conv });
export const invite = (conv: ConvId, username: string) => call<void>("invite", { conv, username });

export const devices = () => call<DeviceView[]>("devices");
export const revokeDevice = (id: string) => call<void>("revoke_device", { id });
export const openDeviceWindow = () => call<string>("open_device_window");

export const clusterStatus = () => call<ClusterView>("cluster_status");
export const killNode = (id: string) => call<void>("kill_node", { id });
export const restartNode = (id: string) => call<void>("restart_node", { id });
