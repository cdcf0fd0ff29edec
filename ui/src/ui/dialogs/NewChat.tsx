// Start (or find) a direct conversation by username.

import { useState } from "preact/hooks";
import { Dialog, ErrorText } from "../common";
import type { DialogProps } from ".";
import { useAction } from "./useAction";

export function NewChat({ chat, onClose }: DialogProps) {
  const [username, setUsername] = useState("");
  const { busy, error, run } = useAction();
  return (
    <Dialog title="New chat" onClose={onClose} testid="new-chat-dialog">
      <form
        class="stack"
        onSubmit={(e) => {
          e.preventDefault();
          void run(async () => {
            await chat.openDirect(username);
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
