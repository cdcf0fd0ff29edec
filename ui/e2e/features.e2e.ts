// End to end on the real desktop app: the chat features beyond sync. Rooms (create, add, join,
// leave), replies, edits, deletes, the typing indicator, read receipts, attachments (an image
// shown inline, a file over the server's limit explained), history loading as you scroll up,
// devices (list, revoke a second device), and a second launch: the server choice and the
// session are remembered, the cached conversations show at once, the window keeps its size.
//
// Screenshots go to artifacts/desktop/features-*.png.

import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { ARTIFACTS, Harness } from "./harness";
import { encode } from "./png";
import { Keys, type Session, waitFor } from "./webdriver";

const h = new Harness("features");
let s: Session;
const win = { carol: "", dave: "", carol2: "" };

afterEach(async (ctx) => {
  if (ctx.task.result?.state === "fail") await h.screenshot(`FAILED-${ctx.task.name.replace(/\W+/g, "-")}`).catch(() => undefined);
});

afterAll(async () => {
  await h.stop();
});

/** A 2×2 PNG (red, green / blue, white), made with the same encoder as the screenshots. */
const PNG = encode({ width: 2, height: 2, data: new Uint8Array([255, 0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255, 255, 255, 255, 255]) });

/** Resident memory of a process, in KiB (0 if gone): RSS, and PSS (shared pages divided
 * among the processes sharing them, so the figures add up). */
function rssKiB(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

function pssKiB(pid: number): number {
  try {
    const m = /Pss:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

const mem = (pid: number) => `RSS ${rssKiB(pid)} KiB, PSS ${pssKiB(pid)} KiB`;

/** The children of a process, with their command names. */
function children(pid: number): { pid: number; comm: string }[] {
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .flatMap((d) => {
      try {
        const stat = readFileSync(`/proc/${d}/stat`, "utf8");
        const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
        const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
        return ppid === pid ? [{ pid: Number(d), comm }] : [];
      } catch {
        return [];
      }
    });
}

/** Milliseconds since boot, the clock /proc uses. */
function uptimeMs(): number {
  return Math.round(Number(readFileSync("/proc/uptime", "utf8").split(" ")[0]) * 1000);
}

/** When a process started, in milliseconds since boot (clock ticks are 100 Hz on Linux). */
function processStartMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[19]) * 10;
}

async function on(who: keyof typeof win): Promise<void> {
  await s.switchTo(win[who]);
}

describe("chat features", () => {
  it("creates a room with a member, who sees it appear", async () => {
    s = await h.start();
    win.carol = await s.windowHandle();
    await s.clickOn('[data-testid="start-local"]');
    await h.register("carol", "carol-laptop");
    win.dave = await h.openDeviceWindow();
    await h.register("dave", "dave-desktop");

    await on("carol");
    await h.menu("new-room");
    await s.type('[data-testid="room-name"]', "general");
    await s.type('[data-testid="new-room-dialog"] input[placeholder="bob, carol"]', "dave");
    await s.clickOn('[data-testid="room-create"]');
    await s.waitFor('[data-testid="conversation-view"][data-title="general"]');
    await h.send("Welcome to #general");
    await h.waitText("Welcome to #general");

    await on("dave");
    await s.clickOn('[data-testid="conversation"][data-title="general"]', 20_000);
    await h.waitText("Welcome to #general");
    // A room shows who wrote what.
    await s.waitFor('[data-testid="message"][data-sender="carol"] .sender');
  });

  it("shows typing, then a reply quoting the message", async () => {
    await on("dave");
    const box = await s.waitFor('[data-testid="composer"]');
    await s.sendKeys(box, "Thanks, glad to be here");
    await on("carol");
    await s.waitFor('[data-testid="typing"]', 10_000);
    expect(await s.text(await s.find('[data-testid="typing"]'))).toBe("dave is typing…");
    await h.screenshot("typing");

    await on("dave");
    await s.empty(box);
    await h.messageAction("Welcome to #general", "reply");
    await s.waitFor(".draft-bar");
    await h.send("Thanks, glad to be here");
    await on("carol");
    await h.waitText("Thanks, glad to be here");
    await s.waitFor('[data-testid="message"][data-sender="dave"] .quote');
  });

  it("sends with Enter and breaks the line with Shift+Enter", async () => {
    await on("dave");
    const box = await s.waitFor('[data-testid="composer"]');
    await s.empty(box);
    // Modifier keys are released at the end of each "send keys", so Shift+Enter is one call.
    await s.sendKeys(box, "First line");
    await s.sendKeys(box, Keys.Shift + Keys.Enter);
    await s.sendKeys(box, "second line");
    expect(await s.execute<string>("return arguments[0].value;", [box])).toBe("First line\nsecond line");
    await s.sendKeys(box, Keys.Enter);
    await on("carol");
    await h.waitText("First line\nsecond line");
  });

  it("edits and deletes, on every device", async () => {
    await on("carol");
    await h.send("Meeting at 3pm");
    await h.waitText("Meeting at 3pm");
    await h.send("This one was a mistake");
    await h.waitText("This one was a mistake");
    await h.messageAction("Meeting at 3pm", "edit");
    const box = await s.waitFor('[data-testid="composer"]');
    // The composer switches to editing and takes the message's text; then change it.
    await waitFor("the composer to hold the text to edit", async () => (await s.execute<string>("return arguments[0].value;", [box])) === "Meeting at 3pm");
    await s.empty(box);
    await s.sendKeys(box, "Meeting at 4pm");
    await s.sendKeys(box, Keys.Enter);
    await h.messageAction("This one was a mistake", "delete");
    // Deleting asks first; then the message goes (for everyone once the undo time is over).
    await s.clickOn('[data-testid="confirm-delete"]');

    await on("dave");
    await h.waitText("Meeting at 4pm");
    await waitFor("the deleted message to be gone", async () => !(await h.texts()).includes("This one was a mistake"));
    expect(await h.texts()).toContain("(deleted)");
    await s.waitFor(".edited");
    await h.screenshot("room-edit-delete-reply");
  });

  it("marks my message read once the other side has seen it", async () => {
    // Dave's window is the focused one (the newest): what it shows, it has read.
    await on("carol");
    await h.send("Seen?");
    await on("dave");
    await h.waitText("Seen?");
    await on("carol");
    await waitFor('"Seen?" marked read', () =>
      s.execute<boolean>(
        `return [...document.querySelectorAll('[data-testid="message"]')].some((m) => m.querySelector('[data-testid="message-text"]')?.textContent === "Seen?" && m.dataset.mark === "read");`,
      ),
    );
  });

  it("shows an image inline and explains the server's size limit", async () => {
    const dir = join(h.home, "files");
    mkdirSync(dir, { recursive: true });
    const image = join(dir, "tiny.png");
    writeFileSync(image, PNG);
    const huge = join(dir, "huge.bin");
    writeFileSync(huge, Buffer.alloc(26 * 1024 * 1024, 1));

    await on("carol");
    const input = await s.find('[data-testid="file-input"]');
    await s.sendKeys(input, image);
    // A chosen file waits in the tray, with its preview, until the message is sent.
    await s.waitFor('[data-testid="tray-item"] [data-testid="tray-preview"]');
    await s.clickOn('[data-testid="send"]');
    await on("dave");
    const img = await s.waitFor('[data-testid="image"]', 30_000);
    await waitFor("the image to load through the attachment scheme", () =>
      s.execute<boolean>("return arguments[0].complete && arguments[0].naturalWidth === 2;", [img]),
    );
    // And it can be saved: into the Downloads folder, under its own name.
    await s.clickOn('figure.image button[aria-label="Save to Downloads"]');
    const toast = await s.waitFor('[data-testid="toast"]');
    const saved = join(h.home, "downloads", "tiny.png");
    expect(await s.text(toast)).toContain(saved);
    expect(readFileSync(saved).equals(PNG)).toBe(true);

    await on("carol");
    await s.sendKeys(await s.find('[data-testid="file-input"]'), huge);
    await s.waitFor('[data-testid="tray-item"]');
    await s.clickOn('[data-testid="send"]');
    const failed = await s.waitFor('[data-testid="message"][data-state="failed"] .failed-line', 20_000);
    expect(await s.text(failed)).toMatch(/huge\.bin is 26 MiB; this server accepts attachments up to 25 MiB/);
    await h.screenshot("attachments");
  });

  it("loads older history as you scroll up", async () => {
    await on("carol");
    const conv = Number(await s.attr(await s.find('[data-testid="conversation-view"]'), "data-conv"));
    // Seed 80 messages straight through the command the composer uses.
    await s.executeAsync(
      `const [conv, done] = [arguments[0], arguments[arguments.length - 1]];
       (async () => { for (let i = 1; i <= 80; i++) await window.__TAURI_INTERNALS__.invoke("send_message", { conv, text: "history " + i, replyTo: null }); })().then(() => done(true), (e) => done(String(e)));`,
      [conv],
    );
    await on("dave");
    await h.waitText("history 80", 30_000);
    // A fresh device gets the latest page only; scrolling up fetches the rest.
    win.carol2 = await h.openDeviceWindow();
    await h.signIn("carol", "carol-tablet");
    await s.clickOn('[data-testid="conversation"][data-title="general"]');
    await h.waitText("history 80");
    expect(await h.texts()).not.toContain("Welcome to #general");
    await waitFor("the beginning of the conversation after scrolling up", async () => {
      await s.execute(`document.querySelector('[data-testid="timeline"]').scrollTop = 0;`);
      return (await h.texts()).includes("Welcome to #general");
    }, 30_000);
    const all = await h.texts();
    expect(all.filter((t) => t.startsWith("history ")).length).toBe(80);
  });

  it("lists my devices and revokes one, which signs it out", async () => {
    await on("carol");
    await h.menu("devices");
    await waitFor("two devices listed", async () => (await s.findAll('[data-testid="device"]')).length === 2);
    await h.screenshot("devices");
    await s.clickOn('[data-testid="devices-dialog"] button.danger');
    await waitFor("the revoked state", async () => (await s.findAll('[data-testid="device"].revoked')).length === 1);
    await s.clickOn('[aria-label="Close"]');

    await on("carol2");
    await s.waitFor('[data-testid="sign-in"]', 20_000);
    expect(await s.text(await s.find(".notice"))).toContain("revoked");
    await h.screenshot("revoked-device-signed-out");
  });

  it("leaves a room, and joins it back from the public rooms", async () => {
    await on("dave");
    await s.clickOn('[data-testid="conversation"][data-title="general"]');
    await s.clickOn('[data-testid="room-info"]');
    // The member list loads into the dialog and moves its buttons: click once it is there.
    await waitFor("the member list", async () => (await s.findAll('[data-testid="room-info-dialog"] .list li')).length === 2);
    await s.clickOn('[data-testid="leave-room"]');
    await waitFor("the room to leave the list", async () => (await s.findAll('[data-testid="conversation"][data-title="general"]')).length === 0);

    await h.menu("browse-rooms");
    await s.clickOn('[data-testid="browse-rooms-dialog"] [data-testid="join-room"]');
    await s.waitFor('[data-testid="conversation-view"][data-title="general"]');
    await h.waitText("history 80");
  });

  it("remembers the server, the session, the conversations and the window size on the next launch", async () => {
    await on("carol");
    await s.execute("return 1");
    await fetch(`${s.base}/session/${s.id}/window/rect`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ width: 1000, height: 700 }),
    });
    await h.quitApp();

    s = await h.start();
    // Straight to the chat, with the cached list, before the cluster is even up.
    await s.waitFor('[data-testid="conversation"][data-title="general"]', 30_000);
    const shown = uptimeMs();
    const app = await waitFor("cluster.json of the second launch", async () => h.cluster(), 30_000);
    const toList = shown - processStartMs(app.app_pid);
    writeFileSync(join(ARTIFACTS, "launch-to-list-ms.txt"), `${toList}\n`);
    console.log(`app process start to conversation list: ${toList} ms`);
    const size = await s.execute<{ w: number; h: number }>("return { w: window.outerWidth, h: window.outerHeight };");
    expect(Math.abs(size.w - 1000)).toBeLessThan(40);
    expect(Math.abs(size.h - 700)).toBeLessThan(60);
    await h.waitLive();
    await s.clickOn('[data-testid="conversation"][data-title="general"]');
    await h.waitText("history 80");
    await h.screenshot("second-launch");

    // Memory with one window and a conversation open: the app process itself, WebKit's helper
    // processes (the web page and the network process), and the local cluster it runs.
    const kids = children(app.app_pid);
    const webkit = kids.filter((k) => k.comm.startsWith("WebKit"));
    const servers = kids.filter((k) => !k.comm.startsWith("WebKit"));
    const report = [
      `app process (pid ${app.app_pid}): ${mem(app.app_pid)}`,
      ...webkit.map((k) => `${k.comm} (pid ${k.pid}): ${mem(k.pid)}`),
      `local cluster (${servers.length} processes): RSS ${servers.reduce((n, k) => n + rssKiB(k.pid), 0)} KiB, PSS ${servers.reduce((n, k) => n + pssKiB(k.pid), 0)} KiB`,
    ].join("\n");
    writeFileSync(join(ARTIFACTS, "memory.txt"), `${report}\n`);
    console.log(report);
  });
});
