// Create a room: its name, whether anyone may join, and people to add right away.

import { useState } from "preact/hooks";
import { Dialog, ErrorText } from "../common";
import type { DialogProps } from ".";
import { useAction } from "./useAction";

export function NewRoom({ chat, onClose }: DialogProps) {
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
            await chat.createRoom(name, isPublic, list);
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
