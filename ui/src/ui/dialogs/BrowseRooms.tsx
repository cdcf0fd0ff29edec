// The public rooms, searchable by name: open one I am in, or join one.

import { useEffect, useState } from "preact/hooks";
import type { RoomListing } from "../../ipc/types";
import { Avatar, Dialog, ErrorText } from "../common";
import type { DialogProps } from ".";
import { useAction } from "./useAction";

export function BrowseRooms({ state, chat, onClose }: DialogProps) {
  const [query, setQuery] = useState("");
  const [rooms, setRooms] = useState<RoomListing[] | null>(null);
  const { busy, error, run } = useAction();
  useEffect(() => {
    const timer = window.setTimeout(() => {
      chat.publicRooms(query).then(setRooms, chat.fail);
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
                    chat.select(r.id);
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
                      await chat.joinRoom(r.id);
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
