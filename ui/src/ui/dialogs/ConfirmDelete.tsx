// Asks before a message of mine is deleted for everyone (the toast after it still offers
// "Undo" for a few seconds).

import type { Item } from "../../model/chat";
import { Dialog } from "../common";

export function ConfirmDelete({ item, onConfirm, onClose }: { item: Item; onConfirm: () => void; onClose: () => void }) {
  const what = item.attachment ? item.attachment.name : item.text;
  return (
    <Dialog title="Delete message?" onClose={onClose} testid="confirm-delete-dialog">
      <p>It is removed for everyone in the conversation, on every device.</p>
      {what && <blockquote class="preview-quote">{what.length > 200 ? `${what.slice(0, 200)}…` : what}</blockquote>}
      <div class="row end">
        <button class="secondary" onClick={onClose}>
          Cancel
        </button>
        <button
          class="danger"
          data-testid="confirm-delete"
          onClick={() => {
            onClose();
            onConfirm();
          }}
        >
          Delete
        </button>
      </div>
    </Dialog>
  );
}
