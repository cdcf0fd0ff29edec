// Before the chat: which screen a window starts on, the first-run choice of server, and
// signing in (creating the account first when asked). The side effects of the first screens,
// kept out of their components; errors come back as sentences for people.

import * as api from "../ipc/commands";
import type { Boot, ServerState, SessionView } from "../ipc/types";

export type Screen =
  | { name: "loading" }
  | { name: "first_run"; boot: Boot }
  | { name: "waiting_for_main"; boot: Boot }
  | { name: "sign_in"; boot: Boot; notice: string | null }
  | { name: "chat"; boot: Boot; session: SessionView };

/** The screen a window opens on, from what Rust says about it. */
export async function firstScreen(notice: string | null = null): Promise<Screen> {
  const boot = await api.bootstrap();
  if (boot.server.phase === "unset") return boot.main ? { name: "first_run", boot } : { name: "waiting_for_main", boot };
  if (boot.session) return { name: "chat", boot, session: boot.session };
  return { name: "sign_in", boot, notice };
}

/** Starts a local cluster, or checks and remembers a server's URL. Throws a sentence. */
export async function chooseServer(local: boolean, url: string): Promise<ServerState> {
  const state = await api.chooseServer(local ? { mode: "local" } : { mode: "remote", url }).catch((e) => {
    throw api.toAppError(e).message;
  });
  if (state.phase === "failed") throw state.message;
  return state;
}

export const serverState = () => api.serverState();

/** Signs this window's device in, creating the account first for "register". Throws a
 * sentence. */
export async function signIn(mode: "login" | "register", username: string, password: string, deviceName: string): Promise<SessionView> {
  try {
    if (mode === "register") await api.register(username, password);
    return await api.login(username, password, deviceName);
  } catch (e) {
    const err = api.toAppError(e);
    throw err.kind === "conflict" ? `The name "${username}" is taken. Sign in instead, or pick another.` : err.message;
  }
}

/** Any thrown value as a sentence. */
export function sentence(e: unknown): string {
  return typeof e === "string" ? e : api.toAppError(e).message;
}
