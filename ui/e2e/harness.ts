// Starts tauri-driver (which starts WebKitWebDriver, which starts the app) with a fresh data
// folder, and hands out a WebDriver session on the real app. Screenshots go to
// artifacts/desktop/. Everything started here is stopped in `stop()`, including the local
// cluster's servers if the app could not stop them itself.

import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync, existsSync, createWriteStream } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { decode, encode, sideBySide } from "./png";
import { Session, waitFor } from "./webdriver";

export const ROOT = resolve(__dirname, "..", "..");
export const ARTIFACTS = resolve(ROOT, "artifacts", "desktop");

/** The app binary: $CHAT_DESKTOP_BIN, else the debug build in the desktop target dir. */
export function appBinary(): string {
  const explicit = process.env.CHAT_DESKTOP_BIN;
  if (explicit) return explicit;
  const target = process.env.CARGO_TARGET_DIR ?? join(ROOT, "target");
  return join(target, "debug", "chat-desktop");
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
    await waitFor("the app to quit", async () => !existsSync(`/proc/${cluster.app_pid}`) || readFileSync(`/proc/${cluster.app_pid}/stat`, "utf8").includes(") Z"), 20_000);
    if (this.session) {
      await this.session.delete().catch(() => undefined);
      this.session = null;
    }
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
