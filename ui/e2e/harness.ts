// Starts tauri-driver (which starts WebKitWebDriver, which starts the app) with a fresh data
// folder, and hands out a WebDriver session on the real app. Screenshots go to
// artifacts/desktop/. Everything started here is stopped in `stop()`, including the local
// cluster's servers if the app could not stop them itself.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync, existsSync, createWriteStream } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { decode, encode, sideBySide } from "./png";
import { Keys, Session, waitFor } from "./webdriver";

/** The password every scenario's users have. */
export const PASSWORD = "correct horse battery";

/** A message of the open conversation, as drawn. */
export interface Msg {
  text: string;
  state: string;
  seq: string;
  sender: string;
  mark: string;
}

/** The status line, as drawn. */
export interface StatusView {
  state: string;
  node: string;
  text: string;
}

export const ROOT = resolve(__dirname, "..", "..");
export const ARTIFACTS = resolve(ROOT, "artifacts", "desktop");

/** The app binary: $CHAT_DESKTOP_BIN, else the debug build in the desktop target dir. */
export function appBinary(): string {
  const explicit = process.env.CHAT_DESKTOP_BIN;
  if (explicit) return explicit;
  const target = process.env.CARGO_TARGET_DIR ?? join(ROOT, "target");
  return join(target, "debug", "chat-desktop");
}

/** Whether a process runs (a zombie waiting to be reaped does not count). */
export function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => ok(port));
    });
  });
}

export interface ClusterFile {
  app_pid: number;
  controller: string;
  controller_pid: number;
  nodes: { id: string; slot: string; pid: number; running: boolean }[];
}

export class Harness {
  readonly dataDir: string;
  readonly home: string;
  private driver: ChildProcess | null = null;
  private port = 0;
  session: Session | null = null;
  private shot = 0;

  private dbus: ChildProcess | null = null;
  private monitor: ChildProcess | null = null;

  /** `name` prefixes screenshots and names the log, so several scenarios share the folder;
   * `env` is added to the app's environment (a GTK theme, say). */
  constructor(
    readonly name: string,
    private readonly env: Record<string, string> = {},
  ) {
    const home = mkdtempSync(join(tmpdir(), "chat-desktop-e2e-"));
    this.dataDir = join(home, "data");
    mkdirSync(ARTIFACTS, { recursive: true });
    this.home = home;
    // The system's link opener, as the app finds it on PATH: this one writes down what it was
    // asked to open, where a desktop would start a browser.
    mkdirSync(join(home, "bin"), { recursive: true });
    writeFileSync(join(home, "bin", "xdg-open"), `#!/bin/sh\nprintf '%s\\n' "$*" >> "${join(home, "opened.txt")}"\n`, { mode: 0o755 });
  }

  /** What the app asked the system to open (links), one per line. */
  opened(): string[] {
    const path = join(this.home, "opened.txt");
    return existsSync(path) ? readFileSync(path, "utf8").split("\n").filter(Boolean) : [];
  }

  /** Gives the app a session bus of its own, as a desktop session has, and records every
   * notification the app sends on it (`notifications()`). Call before `start()`. */
  async withSessionBus(): Promise<void> {
    const dbus = spawn("dbus-daemon", ["--session", "--nofork", "--print-address=1"], { stdio: ["ignore", "pipe", "inherit"] });
    this.dbus = dbus;
    const address = await new Promise<string>((ok, fail) => {
      let out = "";
      dbus.stdout?.on("data", (d: Buffer) => {
        out += d.toString();
        const line = out.split("\n")[0];
        if (out.includes("\n") && line) ok(line.trim());
      });
      dbus.once("exit", (code) => fail(new Error(`dbus-daemon exited (${code})`)));
    });
    this.env.DBUS_SESSION_BUS_ADDRESS = address;
    const log = createWriteStream(join(this.home, "notifications.log"));
    this.monitor = spawn("dbus-monitor", ["--address", address, "type='method_call',interface='org.freedesktop.Notifications',member='Notify'"], {
      stdio: ["ignore", "pipe", "ignore"],
    });
    this.monitor.stdout?.pipe(log);
    // The monitor is listening once it has said hello on the bus.
    await waitFor("dbus-monitor to listen", async () => existsSync(join(this.home, "notifications.log")) && readFileSync(join(this.home, "notifications.log"), "utf8").length > 0, 10_000).catch(() => undefined);
  }

  /** The notifications sent so far: the summary and body of each `Notify` call. */
  notifications(): { summary: string; body: string }[] {
    const path = join(this.home, "notifications.log");
    if (!existsSync(path)) return [];
    const calls = readFileSync(path, "utf8").split(/^method call /m).slice(1);
    return calls.map((call) => {
      const strings = [...call.matchAll(/^\s+string "((?:[^"\\]|\\.)*)"/gm)].map((m) => m[1]!);
      // Notify(app_name, replaces_id, app_icon, summary, body, ...): the strings in order are
      // app name, icon, summary, body.
      return { summary: strings[2] ?? "", body: strings[3] ?? "" };
    });
  }

  /** Starts tauri-driver (once) and a session on the app, i.e. launches the app; resolves
   * once the main window answers. Launching again after the app quit reuses the data folder,
   * as a second run of the app would. */
  async start(): Promise<Session> {
    const app = appBinary();
    if (!existsSync(app)) throw new Error(`app binary not found at ${app}: build it first (scripts/desktop-e2e.sh does)`);
    if (!this.driver) await this.startDriver();
    this.session = await Session.create(`http://127.0.0.1:${this.port}`, {
      browserName: "wry",
      "tauri:options": { application: app },
    });
    return this.session;
  }

  private async startDriver(): Promise<void> {
    this.port = await freePort();
    const nativePort = await freePort();
    const home = this.home;
    // Saved attachments go to the Downloads folder the desktop names; make it one of ours.
    mkdirSync(join(home, "config"), { recursive: true });
    writeFileSync(join(home, "config", "user-dirs.dirs"), `XDG_DOWNLOAD_DIR="${join(home, "downloads")}"\n`);
    const log = createWriteStream(join(ARTIFACTS, `${this.name}.log`));
    this.driver = spawn("tauri-driver", ["--port", String(this.port), "--native-port", String(nativePort)], {
      env: {
        ...process.env,
        CHAT_DESKTOP_DATA_DIR: this.dataDir,
        // Cheap password hashing in the app's local cluster: registration is not under test.
        CHAT_DESKTOP_PASSWORD_HASH: "fast",
        XDG_CONFIG_HOME: join(home, "config"),
        XDG_DATA_HOME: join(home, "share"),
        XDG_CACHE_HOME: join(home, "cache"),
        HOME: home,
        RUST_LOG: process.env.RUST_LOG ?? "warn,chat_desktop=info,client=info,lab=info",
        NO_AT_BRIDGE: "1",
        PATH: `${join(home, "bin")}:${process.env.PATH ?? ""}`,
        ...this.env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.driver.stdout?.pipe(log);
    this.driver.stderr?.pipe(log);
    const base = `http://127.0.0.1:${this.port}`;
    await waitFor("tauri-driver to listen", async () => (await fetch(`${base}/status`)).ok, 15_000);
  }

  /** Quits the app the way a desktop session does (SIGTERM; the app stops its cluster), and
   * waits until it is gone. */
  async quitApp(): Promise<void> {
    const cluster = this.cluster();
    if (!cluster) throw new Error("no cluster.json: is the app running a local cluster?");
    process.kill(cluster.app_pid, "SIGTERM");
    await waitFor("the app to quit", async () => !running(cluster.app_pid), 20_000);
    if (this.session) {
      await this.session.delete().catch(() => undefined);
      this.session = null;
    }
  }

  /** The session, which exists once the app was started. */
  get s(): Session {
    if (!this.session) throw new Error("no session: start the app first");
    return this.session;
  }

  // Chat helpers: every wait polls the page with a deadline. ------------------------------------

  /** Creates an account on the sign-in screen of the current window and waits until it is
   * signed in and live. */
  async register(username: string, deviceName: string): Promise<void> {
    await this.signInAs("register", username, deviceName);
  }

  /** Signs an existing account in on the current window's device. */
  async signIn(username: string, deviceName: string): Promise<void> {
    await this.signInAs("login", username, deviceName);
  }

  private async signInAs(tab: "register" | "login", username: string, deviceName: string): Promise<void> {
    const s = this.s;
    await s.waitFor('[data-testid="sign-in"]', 60_000);
    await s.clickOn(`[data-testid="tab-${tab}"]`);
    await s.type('[data-testid="username"]', username);
    await s.type('[data-testid="password"]', PASSWORD);
    await s.type('[data-testid="device-name"]', deviceName);
    await s.clickOn('[data-testid="submit"]');
    await s.waitFor(`[data-testid="chat-screen"][data-user="${username}"][data-ready="true"]`, 30_000);
    await this.waitLive();
  }

  /** Opens an entry of the sidebar's menu ("new-room", "devices", "cluster", "open-device"...). */
  async menu(item: string): Promise<void> {
    await this.s.clickOn('[data-testid="menu"]');
    await this.s.clickOn(`[data-testid="menu-${item}"]`);
  }

  /** Opens another device window from the menu and switches to it; returns its handle. */
  async openDeviceWindow(): Promise<string> {
    const s = this.s;
    const before = await s.windowHandles();
    await this.menu("open-device");
    const handle = await waitFor("a new window", async () => (await s.windowHandles()).find((w) => !before.includes(w)), 20_000);
    await s.switchTo(handle);
    return handle;
  }

  /** Starts (or opens) the direct conversation with `username` from the "new chat" button. */
  async newChat(username: string): Promise<void> {
    await this.s.clickOn('[data-testid="new-chat"]');
    await this.s.type('[data-testid="new-chat-username"]', username);
    await this.s.clickOn('[data-testid="new-chat-start"]');
    await this.s.waitFor(`[data-testid="conversation-view"][data-title="${username}"]`);
  }

  /** Opens a conversation of the list. */
  async openConversation(title: string, timeoutMs?: number): Promise<void> {
    await this.s.clickOn(`[data-testid="conversation"][data-title="${title}"]`, timeoutMs);
    await this.s.waitFor(`[data-testid="conversation-view"][data-title="${title}"]`);
  }

  /** Types a message into the composer and presses Enter. */
  async send(text: string): Promise<void> {
    const box = await this.s.waitFor('[data-testid="composer"]');
    await this.s.empty(box);
    await this.s.sendKeys(box, text);
    await this.s.sendKeys(box, Keys.Enter);
  }

  /** The messages of the open conversation, as drawn. */
  messages(): Promise<Msg[]> {
    return this.s.execute<Msg[]>(`
      return [...document.querySelectorAll('[data-testid="message"]')].map((m) => ({
        text: m.querySelector('[data-testid="message-text"]')?.textContent ?? (m.querySelector('.deleted') ? "(deleted)" : ""),
        state: m.dataset.state, seq: m.dataset.seq, sender: m.dataset.sender, mark: m.dataset.mark,
      }));`);
  }

  /** The texts of the open conversation's messages ("(deleted)" for a deleted one). */
  async texts(): Promise<string[]> {
    return (await this.messages()).map((m) => m.text);
  }

  /** Waits until `text` is on screen in the open conversation. */
  async waitText(text: string, timeoutMs = 20_000): Promise<void> {
    await waitFor(`"${text}" on screen`, async () => (await this.texts()).includes(text), timeoutMs);
  }

  /** Waits until the open conversation shows `texts` (each exactly once) and all are stored. */
  waitForTexts(texts: string[], timeoutMs = 30_000): Promise<Msg[]> {
    return waitFor(`messages ${JSON.stringify(texts)} stored and shown once each`, async () => {
      const list = await this.messages();
      const ok = texts.every((t) => list.filter((m) => m.text === t && m.state === "sent").length === 1);
      return ok ? list : null;
    }, timeoutMs);
  }

  /** Clicks a message's action (reply, edit, delete...): they show on hover, so click by script. */
  async messageAction(text: string, action: string): Promise<void> {
    await waitFor(`the ${action} button of "${text}"`, () =>
      this.s.execute<boolean>(
        `const m = [...document.querySelectorAll('[data-testid="message"]')].find((m) => m.querySelector('[data-testid="message-text"]')?.textContent === arguments[0]);
         const b = m?.querySelector('[data-testid="' + arguments[1] + '"]');
         if (!b) return false; b.click(); return true;`,
        [text, action],
      ),
    );
  }

  /** The native titles of the app's windows, as the X server has them (what a task bar and a
   * window switcher show). */
  nativeTitles(): string[] {
    const tree = execFileSync("xwininfo", ["-root", "-tree"], { encoding: "utf8" });
    return [...tree.matchAll(/^\s+0x[0-9a-f]+ "((?:[^"\\]|\\.)*)":/gm)].map((m) => m[1]!).filter((t) => t.includes("Cluster Chat"));
  }

  /** The app's log so far (tauri-driver's, the app's and its cluster's output). */
  log(): string {
    return readFileSync(join(ARTIFACTS, `${this.name}.log`), "utf8");
  }

  /** The status line of the current window. */
  status(): Promise<StatusView> {
    return this.s.execute(`
      const el = document.querySelector('[data-testid="status-line"]');
      return el ? { state: el.dataset.state, node: el.dataset.node, text: el.textContent } : { state: "", node: "", text: "" };`);
  }

  /** Waits until the status line says live; returns the node. */
  waitLive(timeoutMs = 60_000): Promise<string> {
    return waitFor("the status line to say connected", async () => {
      const st = await this.status();
      return st.state === "live" ? st.node : null;
    }, timeoutMs);
  }

  /** Saves a screenshot of the current window as `NN-name.png`; returns its path. */
  async screenshot(name: string): Promise<string> {
    if (!this.session) throw new Error("no session");
    // Let the page paint what the last command changed: a screenshot taken right after a DOM
    // change can show the frame before it.
    await this.session
      .executeAsync("const done = arguments[arguments.length - 1]; requestAnimationFrame(() => requestAnimationFrame(() => done(true)));")
      .catch(() => undefined);
    this.shot += 1;
    const path = join(ARTIFACTS, `${this.name}-${String(this.shot).padStart(2, "0")}-${name}.png`);
    writeFileSync(path, await this.session.screenshot());
    return path;
  }

  /** Screenshots several windows and saves them side by side as `NN-name.png`; switches back
   * to the window that was current. */
  async screenshotWindows(name: string, handles: string[]): Promise<string> {
    if (!this.session) throw new Error("no session");
    const current = await this.session.windowHandle();
    const images = [];
    for (const handle of handles) {
      await this.session.switchTo(handle);
      await this.session
        .executeAsync("const done = arguments[arguments.length - 1]; requestAnimationFrame(() => requestAnimationFrame(() => done(true)));")
        .catch(() => undefined);
      images.push(decode(await this.session.screenshot()));
    }
    await this.session.switchTo(current);
    this.shot += 1;
    const path = join(ARTIFACTS, `${this.name}-${String(this.shot).padStart(2, "0")}-${name}.png`);
    writeFileSync(path, encode(sideBySide(images)));
    return path;
  }

  /** The app's `cluster.json` (controller URL, node pids), once the local cluster is up. */
  cluster(): ClusterFile | null {
    const path = join(this.dataDir, "cluster.json");
    if (!existsSync(path)) return null;
    return JSON.parse(readFileSync(path, "utf8")) as ClusterFile;
  }

  /** Ends the session (the app quits and stops its cluster), then tauri-driver; kills any
   * server the app left behind. */
  async stop(): Promise<void> {
    const cluster = this.cluster();
    if (this.session) {
      await this.session.delete().catch(() => undefined);
      this.session = null;
    }
    if (this.driver) {
      this.driver.kill("SIGTERM");
      this.driver = null;
    }
    this.monitor?.kill("SIGTERM");
    this.dbus?.kill("SIGTERM");
    this.monitor = this.dbus = null;
    if (cluster) {
      // The app stops its cluster on exit; anything still running here is a leak to clean up.
      await new Promise((r) => setTimeout(r, 500));
      for (const pid of [cluster.controller_pid, ...cluster.nodes.map((n) => n.pid)]) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
    }
  }
}
