// End to end on the real desktop app: what a developer testing sync across devices needs to see.
//
//  - a message's info: the device that sent it, the node that accepted it, its seq and id, and
//    when each of my devices in the app got it, through which node;
//  - My devices: each device open in the app online or not, on which node, last seen;
//  - the node under one window freezes, messages pile up for it, the node dies: the window
//    moves and says so in a toast ("Moved n1 → n3 · 3 messages caught up"), and the info and
//    device views follow it to its new node;
//  - the device windows open when the app quits are back at the next launch, signed in;
//  - while every node is down the status line offers "Retry now", which tries at once.
//
// Screenshots go to artifacts/desktop/tester-*.png.

import { afterAll, afterEach, describe, expect, it } from "vitest";
import { Harness, running } from "./harness";
import { type Session, waitFor } from "./webdriver";

const h = new Harness("tester");
let s: Session;
const win = { laptop: "", phone: "", uma: "" };

afterEach(async (ctx) => {
  if (ctx.task.result?.state === "fail") await h.screenshot(`FAILED-${ctx.task.name.replace(/\W+/g, "-")}`).catch(() => undefined);
});

afterAll(async () => {
  await h.stop();
});

async function on(who: keyof typeof win): Promise<void> {
  await s.switchTo(win[who]);
}

interface ReceiptRow {
  device: string;
  node: string;
  got: boolean;
}

interface Info {
  sender: string;
  device: string;
  origin: string;
  seq: string;
  id: string;
  receipts: ReceiptRow[];
}

/** Opens the info of a message of the open conversation and reads it once every device of
 * mine in the app has got it. */
async function messageInfo(text: string): Promise<Info> {
  await h.messageAction(text, "info");
  await s.waitFor('[data-testid="message-info-dialog"]');
  return waitFor(`the info of "${text}" with every receipt`, () =>
    s.execute<Info | null>(`
      const d = document.querySelector('[data-testid="message-info-dialog"]');
      const v = (id) => d.querySelector('[data-testid="' + id + '"]')?.textContent ?? "";
      const receipts = [...d.querySelectorAll('[data-testid="receipt"]')].map((r) => ({ device: r.dataset.device, node: r.dataset.node, got: r.dataset.got === "true" }));
      if (receipts.length < 2 || !receipts.every((r) => r.got)) return null;
      return { sender: v("info-sender"), device: v("info-device"), origin: v("info-origin"), seq: v("info-seq"), id: v("info-id"), receipts };`),
  );
}

interface DeviceRow {
  name: string;
  online: string;
  node: string;
  link: string;
}

async function devices(): Promise<DeviceRow[]> {
  return s.execute<DeviceRow[]>(`
    return [...document.querySelectorAll('[data-testid="device"]')].map((d) => ({
      name: d.dataset.name, online: d.dataset.online, node: d.dataset.node,
      link: d.querySelector('[data-testid="device-link"]')?.textContent ?? "" }));`);
}

/** Keeps every toast text the window shows (they go away after a few seconds). */
async function recordToasts(): Promise<void> {
  await s.execute(`
    window.__toasts = [];
    const seen = new Set();
    const look = () => document.querySelectorAll('[data-testid="toast"] .toast-text').forEach((t) => {
      if (!seen.has(t)) { seen.add(t); window.__toasts.push(t.textContent); }
    });
    new MutationObserver(look).observe(document.body, { childList: true, subtree: true });`);
}

const toasts = () => s.execute<string[]>("return window.__toasts ?? [];");

/** The reactions under a message of the open conversation: emoji → count. */
function reactionsOf(text: string): Promise<Record<string, number>> {
  return s.execute(
    `const m = [...document.querySelectorAll('[data-testid="message"]')].find((m) => m.querySelector('[data-testid="message-text"]')?.textContent === arguments[0]);
     const out = {};
     m?.querySelectorAll('[data-testid="reaction"]').forEach((r) => { out[r.dataset.emoji] = Number(r.dataset.count); });
     return out;`,
    [text],
  );
}

describe("testing sync across devices", () => {
  it("shows a message's sender device, origin node, seq, id and when each of my devices got it", async () => {
    s = await h.start();
    win.laptop = await s.windowHandle();
    await s.clickOn('[data-testid="start-local"]');
    await h.register("tess", "tess-laptop");
    win.phone = await h.openDeviceWindow();
    await h.signIn("tess", "tess-phone");
    win.uma = await h.openDeviceWindow();
    await h.register("uma", "uma-desktop");

    await on("laptop");
    await h.newChat("uma");
    await h.send("Which node took this?");
    const [sent] = await h.waitForTexts(["Which node took this?"]);
    const node = await h.waitLive();
    const info = await messageInfo("Which node took this?");
    expect(info.sender).toBe("tess");
    expect(info.device).toContain("tess-laptop");
    // The node this window is on accepted it.
    expect(info.origin).toBe(node);
    expect(info.seq).toBe(sent!.seq);
    expect(info.id).toMatch(/^\d+$/);
    expect(info.receipts.map((r) => r.device).sort()).toEqual(["tess-laptop", "tess-phone"]);
    expect(info.receipts.find((r) => r.device === "tess-laptop")?.node).toBe(node);
    await h.screenshot("message-info");
    await s.clickOn('[aria-label="Close"]');
  });

  it("lists my devices with their online state and node", async () => {
    await on("phone");
    const phoneNode = await h.waitLive();
    await on("laptop");
    const laptopNode = await h.waitLive();
    await h.menu("devices");
    const rows = await waitFor("both devices online, with their nodes", async () => {
      const list = await devices();
      return list.length === 2 && list.every((d) => d.online === "true") ? list : null;
    });
    expect(rows.find((d) => d.name === "tess-laptop")?.node).toBe(laptopNode);
    expect(rows.find((d) => d.name === "tess-phone")?.node).toBe(phoneNode);
    expect(rows.find((d) => d.name === "tess-phone")?.link).toBe(`online · ${phoneNode}`);
    await h.screenshot("my-devices");
    await s.clickOn('[aria-label="Close"]');
  });

  it("shows a reaction on every device of every member", async () => {
    const text = "Which node took this?";
    await on("uma");
    await h.openConversation("tess", 30_000);
    await h.waitText(text);
    await h.messageAction(text, "react");
    await s.clickOn('[data-testid="react-picker"] [data-testid="react-option"][data-emoji="👍"]');
    await waitFor("uma's 👍 under the message", async () => (await reactionsOf(text))["👍"] === 1);
    for (const device of ["laptop", "phone"] as const) {
      await on(device);
      await h.openConversation("uma");
      await waitFor(`the 👍 on tess's ${device}`, async () => (await reactionsOf(text))["👍"] === 1, 30_000);
    }
    // Tess adds hers from the phone, by the chip: two, everywhere.
    await s.clickOn('[data-testid="reaction"][data-emoji="👍"]');
    for (const device of ["phone", "laptop", "uma"] as const) {
      await on(device);
      await waitFor(`two 👍 on ${device}`, async () => (await reactionsOf(text))["👍"] === 2, 30_000);
    }
    await h.screenshotWindows("reaction-everywhere", [win.laptop, win.phone, win.uma]);
  });

  it("moves a window off a dead node and says what it caught up on", async () => {
    await on("uma");
    await h.openConversation("tess");
    const umaNode = await h.waitLive();
    await on("laptop");
    const from = await h.waitLive();
    expect(umaNode, "uma and tess-laptop on different nodes").not.toBe(from);
    const victim = h.cluster()?.nodes.find((n) => n.id === from);
    expect(victim, `node ${from} in cluster.json`).toBeDefined();
    await recordToasts();

    // The node stops answering: what uma writes now waits for this window on the other side.
    process.kill(victim!.pid, "SIGSTOP");
    await on("uma");
    const piled = ["First while you were away", "Second while you were away", "Third while you were away"];
    for (const t of piled) await h.send(t);
    await h.waitForTexts(piled);
    process.kill(victim!.pid, "SIGKILL");

    await on("laptop");
    const to = await waitFor("the laptop window live on another node", async () => {
      const st = await h.status();
      return st.state === "live" && st.node !== from ? st.node : null;
    }, 60_000);
    await h.waitForTexts(piled);
    const moved = await waitFor("a toast about the move", async () => (await toasts()).find((t) => t.startsWith("Moved")));
    expect(moved).toBe(`Moved ${from} → ${to} · 3 messages caught up`);

    // The info of a message caught up there names the new node for this device.
    const info = await messageInfo("Third while you were away");
    expect(info.sender).toBe("uma");
    expect(info.origin).toBe(umaNode);
    expect(info.receipts.find((r) => r.device === "tess-laptop")?.node).toBe(to);
    await h.screenshot("message-info-after-move");
    await s.clickOn('[aria-label="Close"]');

    await h.menu("devices");
    await waitFor("the laptop listed on its new node", async () => (await devices()).find((d) => d.name === "tess-laptop")?.node === to);
    await h.screenshot("my-devices-after-move");
    await s.clickOn('[aria-label="Close"]');
    await h.screenshotWindows("three-devices-after-move", [win.laptop, win.phone, win.uma]);
  });

  it("reopens the device windows at the next launch, signed in", async () => {
    await h.quitApp();
    s = await h.start();
    win.laptop = await s.windowHandle();
    await h.waitLive(90_000);
    // Every window the app had is back, each its own device with its own session.
    await waitFor("the three windows back", async () => {
      const titles = h.nativeTitles();
      return ["tess · tess-laptop", "tess · tess-phone", "uma · uma-desktop"].every((who) => titles.some((t) => t.includes(who)));
    }, 60_000);
    const handles = await s.windowHandles();
    expect(handles).toHaveLength(3);
    for (const handle of handles) {
      await s.switchTo(handle);
      await s.waitFor('[data-testid="chat-screen"][data-ready="true"]', 30_000);
      await h.waitLive(90_000);
    }
    await s.switchTo(win.laptop);
    await h.screenshotWindows("windows-restored", handles);
  });

  it("offers Retry now while every node is down, and tries at once", async () => {
    const cluster = h.cluster();
    expect(cluster).not.toBeNull();
    for (const n of cluster!.nodes.filter((n) => running(n.pid))) process.kill(n.pid, "SIGKILL");
    // Every change of the status line is stamped with the page's clock, so the time left before
    // the next attempt is known when the button is clicked.
    await s.execute(`
      const el = document.querySelector('[data-testid="status-line"]');
      window.__changed = null;
      new MutationObserver(() => { window.__changed = performance.now(); }).observe(el, { attributes: true });`);
    // Click while a long wait is ahead, so an attempt right after the click is the click's.
    const clicked = await waitFor("a wait of seconds before the next attempt, and the click", () =>
      s.execute<{ attempt: number; left: number } | null>(`
        const el = document.querySelector('[data-testid="status-line"]');
        const button = document.querySelector('[data-testid="retry-now"]');
        if (window.__changed === null || !button) return null;
        const left = Number(el.dataset.inMs || 0) - (performance.now() - window.__changed);
        if (left < 2000) return null;
        const attempt = Number(el.dataset.attempt);
        window.__next = null;
        const t0 = performance.now();
        new MutationObserver(() => {
          if (window.__next === null && Number(el.dataset.attempt) > attempt) window.__next = performance.now() - t0;
        }).observe(el, { attributes: true });
        button.click();
        return { attempt, left };`),
    60_000);
    await h.screenshot("retry-now-clicked");
    const next = await waitFor("the next attempt", () => s.execute<number | null>("return window.__next;"), 30_000);
    expect(next, `next attempt ${next} ms after the click, with ${clicked.left} ms of wait left`).toBeLessThan(clicked.left / 2);
  });
});
