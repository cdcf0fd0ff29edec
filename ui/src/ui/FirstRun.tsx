// First run: start a local cluster (three nodes on this machine, stopped when the app quits) or
// connect to a server by URL. The choice is remembered.

import { useState } from "preact/hooks";
import type { ServerState } from "../ipc/types";
import { chooseServer, sentence } from "../model/session";
import { ErrorText } from "./common";
import { ServerIcon, UsersIcon } from "./icons";

export function FirstRun({ onChosen }: { onChosen: (state: ServerState) => void }) {
  const [mode, setMode] = useState<"pick" | "remote">("pick");
  const [url, setUrl] = useState("http://127.0.0.1:8080");
  const [busy, setBusy] = useState<"local" | "remote" | null>(null);
  const [error, setError] = useState<string | null>(null);

  const choose = async (local: boolean) => {
    setBusy(local ? "local" : "remote");
    setError(null);
    try {
      onChosen(await chooseServer(local, url));
    } catch (e) {
      setError(sentence(e));
    } finally {
      setBusy(null);
    }
  };

  return (
    <div class="center-screen first-run" data-testid="first-run">
      <div class="card wide">
        <div class="brand">
          <span class="logo" aria-hidden="true" />
          <div>
            <h1>Welcome to Cluster Chat</h1>
            <p class="muted">Chat on a cluster you can watch working. Where should this app connect?</p>
          </div>
        </div>
        {mode === "pick" ? (
          <div class="choices">
            <button class="choice" data-testid="start-local" disabled={busy !== null} onClick={() => void choose(true)}>
              <ServerIcon size={28} />
              <strong>{busy === "local" ? "Starting the local cluster…" : "Start a local cluster"}</strong>
              <span class="muted">Three chat nodes and a controller on this computer, with nothing to install. They stop when the app quits; history is kept.</span>
            </button>
            <button class="choice" data-testid="connect-remote" disabled={busy !== null} onClick={() => setMode("remote")}>
              <UsersIcon size={28} />
              <strong>Connect to a server</strong>
              <span class="muted">Use a cluster someone runs for you: enter its controller's address.</span>
            </button>
          </div>
        ) : (
          <form
            class="stack"
            onSubmit={(e) => {
              e.preventDefault();
              void choose(false);
            }}
          >
            <label>
              Controller URL
              <input type="url" value={url} onInput={(e) => setUrl(e.currentTarget.value)} placeholder="http://chat.example.org:8080" required data-testid="server-url" />
            </label>
            <div class="row end">
              <button type="button" class="secondary" onClick={() => setMode("pick")}>
                Back
              </button>
              <button type="submit" class="primary" disabled={busy !== null}>
                {busy ? "Checking…" : "Connect"}
              </button>
            </div>
          </form>
        )}
        <ErrorText error={error} />
      </div>
    </div>
  );
}
