// The window's top level: asks Rust what to show (`bootstrap`), then the first-run choice, the
// sign-in screen, or the chat. Each window is a device; this component does not care which.

import { useEffect, useState } from "preact/hooks";
import type { ServerState } from "../ipc/types";
import { firstScreen, type Screen, sentence } from "../model/session";
import { ChatScreen } from "./ChatScreen";
import { FirstRun } from "./FirstRun";
import { SignIn } from "./SignIn";

export function App() {
  const [screen, setScreen] = useState<Screen>({ name: "loading" });
  const [fatal, setFatal] = useState<string | null>(null);

  const load = async (notice: string | null = null) => {
    try {
      setScreen(await firstScreen(notice));
    } catch (e) {
      setFatal(sentence(e));
    }
  };

  useEffect(() => {
    void load();
  }, []);

  if (fatal) {
    return (
      <div class="center-screen">
        <div class="card">
          <h1>Something went wrong</h1>
          <p class="error-text">{fatal}</p>
        </div>
      </div>
    );
  }

  switch (screen.name) {
    case "loading":
      return <div class="center-screen" data-testid="loading" />;
    case "first_run":
      return (
        <FirstRun
          onChosen={(server: ServerState) =>
            setScreen({ name: "sign_in", boot: { ...screen.boot, server }, notice: null })
          }
        />
      );
    case "waiting_for_main":
      return (
        <div class="center-screen">
          <div class="card">
            <h1>Choose a server first</h1>
            <p class="muted">Pick "Start a local cluster" or a server URL in the main window, then open another device again.</p>
          </div>
        </div>
      );
    case "sign_in":
      return (
        <SignIn
          boot={screen.boot}
          notice={screen.notice}
          onSignedIn={(session) => setScreen({ name: "chat", boot: screen.boot, session })}
        />
      );
    case "chat":
      return <ChatScreen onSignedOut={(reason) => void load(reason)} />;
  }
}
