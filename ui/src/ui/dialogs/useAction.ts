// A dialog's action: a busy flag while it runs, and its error as a sentence under the form.

import { useState } from "preact/hooks";
import { toAppError } from "../../ipc/commands";

/** Runs an action with a busy flag and an error line. */
export function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const run = async (f: () => Promise<void>) => {
    setBusy(true);
    setError(null);
    try {
      await f();
    } catch (e) {
      setError(toAppError(e).message);
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, run };
}
