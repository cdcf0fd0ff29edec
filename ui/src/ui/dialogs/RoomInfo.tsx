// The open room's members (with presence), adding someone, leaving the room.

import { useEffect, useState } from "preact/hooks";
import type { MemberInfo } from "../../ipc/types";
import { Avatar, Dialog, ErrorText } from "../common";
import type { DialogProps } from ".";
import { useAction } from "./useAction";

export function RoomInfo({ state, chat, onClose }: DialogProps) {
  const conv = state.selected !== null ? state.convs[state.selected] : undefined;
  const [members, setMembers] = useState<MemberInfo[] | null>(null);
  const [username, setUsername] = useState("");
  const { busy, error, run } = useAction();
  const load = () => {
    if (conv) chat.members(conv.id).then(setMembers, chat.fail);
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
            await chat.invite(conv.id, username);
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
              await chat.leaveRoom(conv.id);
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
