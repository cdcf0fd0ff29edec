// Signing this device out, with a warning when messages have not been sent yet.

import { waitingCount } from "../../model/view";
import { Dialog, ErrorText } from "../common";
import type { DialogProps } from ".";
import { useAction } from "./useAction";

export function SignOut({ state, chat, onClose }: DialogProps) {
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
              await chat.signOut();
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
