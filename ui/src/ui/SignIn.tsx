// Sign in or create an account, and name this device. A second device window suggests the
// main window's user.

import { useEffect, useState } from "preact/hooks";
import type { Boot, ServerState, SessionView } from "../ipc/types";
import { sentence, serverState, signIn } from "../model/session";
import { ErrorText } from "./common";

function serverLine(s: ServerState): string {
  switch (s.phase) {
    case "starting":
      return "Starting the local cluster…";
    case "ready":
      return s.choice.mode === "local" ? `Local cluster at ${s.url}` : `Server ${s.url}`;
    case "failed":
      return `The local cluster did not start: ${s.message}`;
    case "unset":
      return "No server chosen";
  }
}

export function SignIn({ boot, notice, onSignedIn }: { boot: Boot; notice: string | null; onSignedIn: (s: SessionView) => void }) {
  const [mode, setMode] = useState<"login" | "register">(boot.suggested_username ? "login" : "register");
  const [username, setUsername] = useState(boot.suggested_username ?? "");
  const [password, setPassword] = useState("");
  const [deviceName, setDeviceName] = useState(boot.suggested_device_name);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [server, setServer] = useState<ServerState>(boot.server);

  // Follow a local cluster that is still starting.
  useEffect(() => {
    if (server.phase !== "starting") return;
    const timer = window.setInterval(() => {
      void serverState().then(setServer, () => undefined);
    }, 400);
    return () => window.clearInterval(timer);
  }, [server.phase]);

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      onSignedIn(await signIn(mode, username, password, deviceName));
    } catch (err) {
      setError(sentence(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div class="center-screen" data-testid="sign-in">
      <form class="card" onSubmit={(e) => void submit(e)}>
        <div class="brand">
          <span class="logo" aria-hidden="true" />
          <div>
            <h1>{mode === "register" ? "Create your account" : "Sign in"}</h1>
            <p class={`muted server-line ${server.phase}`} data-testid="server-line">
              {serverLine(server)}
            </p>
          </div>
        </div>
        {notice && <p class="notice">{notice}</p>}
        <div class="tabs" role="tablist">
          <button type="button" role="tab" aria-selected={mode === "register"} class={mode === "register" ? "active" : ""} onClick={() => setMode("register")} data-testid="tab-register">
            New account
          </button>
          <button type="button" role="tab" aria-selected={mode === "login"} class={mode === "login" ? "active" : ""} onClick={() => setMode("login")} data-testid="tab-login">
            I have an account
          </button>
        </div>
        <label>
          Username
          <input value={username} onInput={(e) => setUsername(e.currentTarget.value.toLowerCase())} autocomplete="username" autocapitalize="off" spellcheck={false} required pattern="[a-z0-9][a-z0-9_.\-]{2,31}" title="3 to 32 lowercase letters, digits, '.', '_' or '-'" data-testid="username" />
        </label>
        <label>
          Password
          <input type="password" value={password} onInput={(e) => setPassword(e.currentTarget.value)} autocomplete={mode === "register" ? "new-password" : "current-password"} required minLength={8} data-testid="password" />
          {mode === "register" && <span class="hint">At least 8 characters.</span>}
        </label>
        <label>
          This device's name
          <input value={deviceName} onInput={(e) => setDeviceName(e.currentTarget.value)} maxLength={64} data-testid="device-name" />
          <span class="hint">Shown in your list of devices, where you can revoke it.</span>
        </label>
        <ErrorText error={error} />
        <button type="submit" class="primary block" disabled={busy || server.phase === "failed"} data-testid="submit">
          {busy ? (server.phase === "starting" ? "Waiting for the cluster…" : "One moment…") : mode === "register" ? "Create account" : "Sign in"}
        </button>
      </form>
    </div>
  );
}
