// The dialogs: start a direct chat, create or browse rooms, a room's members (invite, leave),
// my devices (revoke), the cluster's nodes (kill and restart a local node), signing out.

import type { JSX } from "preact";
import { useEffect, useState } from "preact/hooks";
import * as api from "../ipc/commands";
import type { ClusterView, DeviceInfo, MemberInfo, RoomListing } from "../ipc/types";
import type { ChatState } from "../model/chat";
import { listTime } from "../model/format";
import { processRuns, statusLine, waitingCount } from "../model/view";
import type { Actions } from "./ChatScreen";
import { Avatar, Dialog, ErrorText } from "./common";

export type DialogName = "new_chat" | "new_room" | "browse_rooms" | "devices" | "cluster" | "room_info" | "sign_out";

interface Props {
  state: ChatState;
  actions: Actions;
  onClose: () => void;
}

export function Dialogs({ name, ...p }: Props & { name: DialogName }): JSX.Element {
  switch (name) {
    case "new_chat":
      return <NewChat {...p} />;
    case "new_room":
      return <NewRoom {...p} />;
    case "browse_rooms":
      return <BrowseRooms {...p} />;
    case "devices":
      return <Devices {...p} />;
    case "cluster":
      return <Cluster {...p} />;
    case "room_info":
      return <RoomInfo {...p} />;
    case "sign_out":
      return <SignOut {...p} />;
  }
}

/** Runs an action with a busy flag and an error line. */
function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const run = async (f: () => Promise<void>) => {
    setBusy(true);
    setError(null);
    try {
      await f();
    } catch (e) {
      setError(api.toAppError(e).message);
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, run };
}

function NewChat({ actions, onClose }: Props) {
  const [username, setUsername] = useState("");
  const { busy, error, run } = useAction();
  return (
    <Dialog title="New chat" onClose={onClose} testid="new-chat-dialog">
      <form
        class="stack"
        onSubmit={(e) => {
          e.preventDefault();
          void run(async () => {
            const summary = await api.openDirect(username);
            actions.upsert(summary);
            actions.select(summary.id);
            onClose();
          });
        }}
      >
        <label>
          Username
          <input value={username} onInput={(e) => setUsername(e.currentTarget.value.toLowerCase())} placeholder="bob" autocapitalize="off" spellcheck={false} required data-testid="new-chat-username" />
        </label>
        <ErrorText error={error} />
        <div class="row end">
          <button type="button" class="secondary" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy} data-testid="new-chat-start">
            {busy ? "Opening…" : "Start chat"}
          </button>
        </div>
      </form>
    </Dialog>
  );
}

function NewRoom({ actions, onClose }: Props) {
  const [name, setName] = useState("");
  const [isPublic, setPublic] = useState(true);
  const [members, setMembers] = useState("");
  const { busy, error, run } = useAction();
  return (
    <Dialog title="New room" onClose={onClose} testid="new-room-dialog">
      <form
        class="stack"
        onSubmit={(e) => {
          e.preventDefault();
          void run(async () => {
            const list = members.split(/[\s,]+/).filter(Boolean);
            const summary = await api.createRoom(name, isPublic, list);
            actions.upsert(summary);
            actions.select(summary.id);
            onClose();
          });
        }}
      >
        <label>
          Room name
          <input value={name} onInput={(e) => setName(e.currentTarget.value)} placeholder="general" maxLength={64} required data-testid="room-name" />
        </label>
        <label>
          Add people <span class="muted small">(usernames, separated by spaces or commas)</span>
          <input value={members} onInput={(e) => setMembers(e.currentTarget.value.toLowerCase())} placeholder="bob, carol" autocapitalize="off" spellcheck={false} />
        </label>
        <label class="check">
          <input type="checkbox" checked={isPublic} onChange={(e) => setPublic(e.currentTarget.checked)} />
          Public: anyone can find and join it
        </label>
        <ErrorText error={error} />
        <div class="row end">
          <button type="button" class="secondary" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={busy} data-testid="room-create">
            {busy ? "Creating…" : "Create room"}
          </button>
        </div>
      </form>
    </Dialog>
  );
}

function BrowseRooms({ state, actions, onClose }: Props) {
  const [query, setQuery] = useState("");
  const [rooms, setRooms] = useState<RoomListing[] | null>(null);
  const { busy, error, run } = useAction();
  useEffect(() => {
    const timer = window.setTimeout(() => {
      api.publicRooms(query).then(setRooms, (e) => actions.fail(e));
    }, 200);
    return () => window.clearTimeout(timer);
  }, [query]);
  return (
    <Dialog title="Public rooms" onClose={onClose} testid="browse-rooms-dialog">
      <input value={query} onInput={(e) => setQuery(e.currentTarget.value)} placeholder="Search rooms" aria-label="Search rooms" />
      <ul class="list">
        {rooms === null && <li class="muted">Loading…</li>}
        {rooms?.length === 0 && <li class="muted">No public room{query ? " matches" : " yet"}.</li>}
        {rooms?.map((r) => {
          const joined = state.convs[r.id] !== undefined;
          return (
            <li key={r.id}>
              <Avatar name={r.name} size={32} room />
              <span class="grow">
                <strong>#{r.name}</strong>
                <span class="muted small"> · {r.member_count} member{r.member_count === 1 ? "" : "s"}</span>
              </span>
              {joined ? (
                <button
                  class="secondary"
                  onClick={() => {
                    actions.select(r.id);
                    onClose();
                  }}
                >
                  Open
                </button>
              ) : (
                <button
                  class="primary"
                  disabled={busy}
                  data-testid="join-room"
                  onClick={() =>
                    void run(async () => {
                      const summary = await api.joinRoom(r.id);
                      actions.upsert(summary);
                      actions.select(summary.id);
                      onClose();
                    })
                  }
                >
                  Join
                </button>
              )}
            </li>
          );
        })}
      </ul>
      <ErrorText error={error} />
    </Dialog>
  );
}

function RoomInfo({ state, actions, onClose }: Props) {
  const conv = state.selected !== null ? state.convs[state.selected] : undefined;
  const [members, setMembers] = useState<MemberInfo[] | null>(null);
  const [username, setUsername] = useState("");
  const { busy, error, run } = useAction();
  const load = () => {
    if (conv) api.members(conv.id).then(setMembers, (e) => actions.fail(e));
  };
  useEffect(load, [conv?.id]);
  if (!conv) return <></>;
  return (
    <Dialog title={`#${conv.name}`} onClose={onClose} testid="room-info-dialog">
      <p class="muted small">
        {conv.public ? "Public room: anyone can join." : "Private room: members add people."} {conv.member_count} member{conv.member_count === 1 ? "" : "s"}.
      </p>
      <ul class="list">
        {members?.map((m) => (
          <li key={m.user.id}>
            <Avatar name={m.user.username} size={32} online={state.online[m.user.id] ?? m.online} />
            <span class="grow">
              <strong>{m.user.username}</strong>
              {state.me?.id === m.user.id && <span class="muted small"> (you)</span>}
            </span>
          </li>
        ))}
      </ul>
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          void run(async () => {
            await api.invite(conv.id, username);
            setUsername("");
            load();
          });
        }}
      >
        <input class="grow" value={username} onInput={(e) => setUsername(e.currentTarget.value.toLowerCase())} placeholder="Add someone by username" autocapitalize="off" spellcheck={false} required />
        <button type="submit" class="secondary" disabled={busy}>
          Add
        </button>
      </form>
      <ErrorText error={error} />
      <div class="row end">
        <button
          class="danger"
          disabled={busy}
          onClick={() =>
            void run(async () => {
              await api.leaveRoom(conv.id);
              actions.select(null);
              onClose();
            })
          }
          data-testid="leave-room"
        >
          Leave room
        </button>
      </div>
    </Dialog>
  );
}

function Devices({ actions, onClose }: Props) {
  const [devices, setDevices] = useState<DeviceInfo[] | null>(null);
  const { busy, error, run } = useAction();
  const load = () => api.devices().then(setDevices, (e) => actions.fail(e));
  useEffect(() => void load(), []);
  const now = Date.now();
  return (
    <Dialog title="My devices" onClose={onClose} wide testid="devices-dialog">
      <p class="muted small">Every device you signed in from. Revoking one signs it out everywhere at once.</p>
      <ul class="list">
        {devices === null && <li class="muted">Loading…</li>}
        {devices?.map((d) => (
          <li key={d.id} class={d.state} data-testid="device">
            <span class="grow">
              <strong>{d.name}</strong>
              {d.current && <span class="pill ok">this device</span>}
              {d.state === "revoked" && <span class="pill bad">revoked</span>}
              <span class="muted small block">
                last sign-in {listTime(d.last_login, now)} · id {d.id.slice(0, 8)}
              </span>
            </span>
            {!d.current && d.state === "active" && (
              <button
                class="danger"
                disabled={busy}
                onClick={() =>
                  void run(async () => {
                    await api.revokeDevice(d.id);
                    actions.toast(`${d.name} was signed out.`);
                    await load();
                  })
                }
              >
                Revoke
              </button>
            )}
          </li>
        ))}
      </ul>
      <ErrorText error={error} />
      <div class="row end">
        <button class="secondary" onClick={() => void api.openDeviceWindow().then(onClose, (e) => actions.fail(e))} data-testid="devices-open-window">
          Open another device window
        </button>
      </div>
    </Dialog>
  );
}

function Cluster({ state, actions, onClose }: Props) {
  const [view, setView] = useState<ClusterView | null>(null);
  const [changing, setChanging] = useState(false);
  const { busy, error, run } = useAction();
  const load = () => api.clusterStatus().then(setView, (e) => actions.fail(e));
  useEffect(() => {
    void load();
    const timer = window.setInterval(() => void load(), 1000);
    return () => window.clearInterval(timer);
  }, []);
  const line = statusLine(state.status, state.server, waitingCount(state));
  return (
    <Dialog title="Cluster" onClose={onClose} wide testid="cluster-dialog">
      <p class="muted small">
        {view ? (view.local ? `Local cluster started by this app · controller ${view.controller}` : `Controller ${view.controller}`) : "Asking the controller…"}
        <br />
        This window is {line.node ? `on node ${line.node}` : "not connected to a node"}.
      </p>
      <table class="nodes">
        <thead>
          <tr>
            <th>Node</th>
            <th>State</th>
            <th>Devices</th>
            {view?.local && <th>Process</th>}
            {view?.local && <th />}
          </tr>
        </thead>
        <tbody>
          {view?.nodes.map((n) => (
            <tr key={n.id} data-testid="node" data-node={n.id} data-state={n.state} class={line.node === n.id ? "mine" : ""}>
              <td>
                <strong>{n.id}</strong>
                {line.node === n.id && <span class="pill ok">this window</span>}
              </td>
              <td>
                <span class={`pill ${n.state === "live" ? "ok" : n.state === "draining" || n.state === "starting" ? "warn" : "bad"}`}>{n.state}</span>
              </td>
              <td>{n.connections}</td>
              {view.local && <td class="muted">{n.pid ? `pid ${n.pid}` : ""}{n.exit ? ` · ${n.exit}` : ""}</td>}
              {view.local && (
                <td class="right">
                  {processRuns(n.state) ? (
                    <button class="danger small" disabled={busy} onClick={() => void run(() => api.killNode(n.id).then(load))} data-testid="kill-node">
                      Kill
                    </button>
                  ) : (
                    <button class="secondary small" disabled={busy} onClick={() => void run(() => api.restartNode(n.id).then(load))} data-testid="restart-node">
                      Restart
                    </button>
                  )}
                </td>
              )}
            </tr>
          ))}
        </tbody>
      </table>
      {view?.local && <p class="muted small">Kill sends SIGKILL, as a crash would: devices on that node reconnect to another one and resync, with nothing lost or doubled.</p>}
      <ErrorText error={error} />
      <div class="row end">
        {changing && <span class="muted small grow">Every window is signed out; the app restarts and asks where to connect.</span>}
        {changing && (
          <button class="secondary" onClick={() => setChanging(false)}>
            Cancel
          </button>
        )}
        <button class="danger" disabled={busy} onClick={() => (changing ? void run(() => api.forgetServer()) : setChanging(true))}>
          {changing ? "Sign out and change" : "Change server…"}
        </button>
      </div>
    </Dialog>
  );
}

function SignOut({ state, onClose }: Props) {
  const { busy, error, run } = useAction();
  const waiting = waitingCount(state);
  return (
    <Dialog title="Sign out" onClose={onClose} testid="sign-out-dialog">
      <p>Sign {state.me?.username} out of this device? Its local history is removed.</p>
      {waiting > 0 && <p class="error-text">{waiting} message{waiting === 1 ? " has" : "s have"} not been sent yet and will be lost.</p>}
      <ErrorText error={error} />
      <div class="row end">
        <button class="secondary" onClick={onClose}>
          Cancel
        </button>
        <button
          class="danger"
          disabled={busy}
          onClick={() =>
            void run(async () => {
              await api.logout();
              window.location.reload();
            })
          }
          data-testid="sign-out-confirm"
        >
          Sign out
        </button>
      </div>
    </Dialog>
  );
}
