// End to end on the real desktop app: what people who chat every day expect.
//
//  - a new contact's presence shows in the list before the chat is opened;
//  - the unread count reaches the native window title;
//  - hover actions are full-size buttons beside the bubble, never over its text;
//  - delete asks first, can be undone, and leaves no quote, badge or "Message deleted" behind;
//  - errors are sentences that say what to do;
//  - formatting (bold, code, links) drawn safely; a link opens in the system's browser;
//  - an @mention of me badges the room and raises a native notification;
//  - search finds a message of another conversation and opens it there;
//  - a pasted image waits in a tray with its preview, and goes with its caption;
//  - a conversation opens at a "New messages" line.
//
// Screenshots go to artifacts/desktop/everyday-*.png.

import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Harness } from "./harness";
import { encode } from "./png";
import { Keys, type Session, waitFor } from "./webdriver";

const h = new Harness("everyday");
let s: Session;
const win = { erin: "", frank: "" };

afterEach(async (ctx) => {
  if (ctx.task.result?.state === "fail") await h.screenshot(`FAILED-${ctx.task.name.replace(/\W+/g, "-")}`).catch(() => undefined);
});

beforeAll(async () => {
  await h.withSessionBus();
});

afterAll(async () => {
  await h.stop();
});

async function on(who: keyof typeof win): Promise<void> {
  await s.switchTo(win[who]);
}

/** A conversation row of the list, as drawn. */
function row(title: string): Promise<{ unread: string; online: string | null; preview: string; mention: boolean } | null> {
  return s.execute(
    `const r = document.querySelector('[data-testid="conversation"][data-title="' + arguments[0] + '"]');
     return r ? { unread: r.dataset.unread, online: r.querySelector('[data-testid="presence"]')?.dataset.online ?? null,
                  preview: r.querySelector('.conv-preview')?.textContent ?? "", mention: !!r.querySelector('[data-testid="mention-badge"]') } : null;`,
    [title],
  );
}

/** The 2×2 PNG the attachment scenarios send. */
const PNG = encode({ width: 2, height: 2, data: new Uint8Array([255, 0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255, 255, 255, 255, 255]) });

describe("everyday chatting", () => {
  it("shows a new contact online in the list before the chat is opened", async () => {
    s = await h.start();
    win.erin = await s.windowHandle();
    await s.clickOn('[data-testid="start-local"]');
    await h.register("erin", "erin-laptop");
    win.frank = await h.openDeviceWindow();
    await h.register("frank", "frank-desktop");

    await on("erin");
    await h.newChat("frank");
    await h.send("Hi Frank, welcome aboard");
    await h.waitForTexts(["Hi Frank, welcome aboard"]);

    await on("frank");
    // The conversation appears, unopened, with erin shown online: she is.
    const shown = await waitFor("erin's conversation with her presence", async () => {
      const r = await row("erin");
      return r?.online === "true" ? r : null;
    });
    expect(shown.unread).toBe("1");
    await h.screenshot("new-contact-online");
  });

  it("puts the unread count in the native window title", async () => {
    // What the X server has as the window's name is what a task bar shows.
    await waitFor("frank's native title to carry the unread count", async () => h.nativeTitles().some((t) => t.startsWith("(1) ") && t.includes("frank")));
    await h.openConversation("erin");
    await h.waitForTexts(["Hi Frank, welcome aboard"]);
    await waitFor("the count to leave the title once read", async () => h.nativeTitles().some((t) => t.includes("frank") && !t.startsWith("(")));
  });

  it("shows hover actions as full-size buttons beside the bubble, not over its text", async () => {
    await on("erin");
    const bubble = await s.waitFor('[data-testid="message"] [data-testid="message-text"]');
    await s.hover(bubble);
    const geometry = await waitFor("the toolbar on hover", () =>
      s.execute<{ buttons: { w: number; h: number }[]; bar: DOMRect; text: DOMRect } | null>(
        `const m = document.querySelector('[data-testid="message"]');
         const bar = m.querySelector('.actions');
         if (!bar || getComputedStyle(bar).display === "none") return null;
         return { buttons: [...bar.querySelectorAll('button')].map((b) => ({ w: b.getBoundingClientRect().width, h: b.getBoundingClientRect().height })),
                  bar: bar.getBoundingClientRect().toJSON(), text: m.querySelector('.bubble').getBoundingClientRect().toJSON() };`,
      ),
    );
    for (const b of geometry.buttons) {
      expect(b.w, "button width").toBeGreaterThanOrEqual(28);
      expect(b.h, "button height").toBeGreaterThanOrEqual(28);
    }
    const overlaps = geometry.bar.left < geometry.text.right && geometry.bar.right > geometry.text.left && geometry.bar.top < geometry.text.bottom && geometry.bar.bottom > geometry.text.top;
    expect(overlaps, `toolbar ${JSON.stringify(geometry.bar)} over bubble ${JSON.stringify(geometry.text)}`).toBe(false);
    await h.screenshot("hover-actions");
  });

  it("asks before deleting, can undo, and leaves nothing behind", async () => {
    // Frank answers; erin replies to it, then deletes her reply: no quote stays.
    await on("frank");
    await h.send("Thanks!");
    await on("erin");
    await h.waitText("Thanks!");
    await h.messageAction("Thanks!", "reply");
    await h.send("You are welcome");
    await h.waitForTexts(["You are welcome"]);

    await h.messageAction("You are welcome", "delete");
    await s.waitFor('[data-testid="confirm-delete-dialog"]');
    await h.screenshot("delete-asks-first");
    await s.clickOn('[data-testid="confirm-delete"]');
    const toast = await s.waitFor('[data-testid="toast"] [data-testid="toast-action"]');
    expect(await s.text(toast)).toBe("Undo");
    await h.screenshot("delete-undo-toast");
    await s.click(toast);
    await h.waitForTexts(["You are welcome"]);
    // Undone in time: frank never saw it go.
    await on("frank");
    await h.waitText("You are welcome");

    await on("erin");
    await h.messageAction("You are welcome", "delete");
    await s.clickOn('[data-testid="confirm-delete"]');
    await on("frank");
    await waitFor("the reply deleted on frank's side", async () => (await h.texts()).includes("(deleted)"), 30_000);
    expect(await s.findAll('[data-testid="message"] .deleted')).toHaveLength(1);
    expect(await s.execute<boolean>(`return !!document.querySelector('[data-testid="message"] .deleted')?.closest('.bubble')?.querySelector('.quote');`)).toBe(false);

    // A message deleted before frank read it takes its unread badge with it, and the list
    // shows the message before it, not "Message deleted". Frank looks at another room.
    await h.menu("new-room");
    await s.type('[data-testid="room-name"]', "lobby");
    await s.clickOn('[data-testid="room-create"]');
    await s.waitFor('[data-testid="conversation-view"][data-title="lobby"]');
    await on("erin");
    await h.send("Oops, wrong chat");
    await h.waitForTexts(["Oops, wrong chat"]);
    await on("frank");
    await waitFor("the unread badge", async () => (await row("erin"))?.unread === "1");
    await on("erin");
    await h.messageAction("Oops, wrong chat", "delete");
    await s.clickOn('[data-testid="confirm-delete"]');
    await on("frank");
    const after = await waitFor("the badge gone with the message", async () => {
      const r = await row("erin");
      return r?.unread === "0" ? r : null;
    }, 30_000);
    expect(after.preview).not.toContain("deleted");
    await h.screenshot("deleted-unread-leaves-no-badge");
  });

  it("explains errors in sentences", async () => {
    await on("erin");
    await s.clickOn('[data-testid="new-chat"]');
    await s.type('[data-testid="new-chat-username"]', "nobody");
    await s.clickOn('[data-testid="new-chat-start"]');
    const error = await s.waitFor('[data-testid="new-chat-dialog"] [data-testid="error"]');
    const text = await s.text(error);
    expect(text).toMatch(/^Nobody is called "nobody" on this server\. Check the spelling/);
    await h.screenshot("error-sentence");
    await s.clickOn('[aria-label="Close"]');
  });

  it("formats messages safely and opens links in the system's browser", async () => {
    await on("erin");
    await h.openConversation("frank");
    await h.send("**Release** is `v1.2` — notes at https://example.org/notes. <b>not bold</b>");
    await on("frank");
    await h.openConversation("erin");
    const text = await s.waitFor('[data-testid="message-text"] strong');
    expect(await s.text(text)).toBe("Release");
    expect(await s.execute<string>(`return [...document.querySelectorAll('[data-testid="message-text"] code')].pop()?.textContent;`)).toBe("v1.2");
    // What looks like HTML stays text.
    expect(await s.execute<number>(`return document.querySelectorAll('[data-testid="message-text"] b').length;`)).toBe(0);
    await s.clickOn('[data-testid="message-text"] [data-testid="link"]');
    await waitFor("the link handed to the system's opener", async () => h.opened().includes("https://example.org/notes"));
    // The webview itself stayed on the app.
    expect(await s.execute<string>("return location.pathname;")).not.toContain("notes");
    await h.screenshot("formatting");
  });

  it("badges and notifies a mention of me", async () => {
    // Erin adds frank to a room and mentions him there while frank looks at another chat.
    await on("erin");
    await h.menu("new-room");
    await s.type('[data-testid="room-name"]', "team");
    await s.type('[data-testid="new-room-dialog"] input[placeholder="bob, carol"]', "frank");
    await s.clickOn('[data-testid="room-create"]');
    await s.waitFor('[data-testid="conversation-view"][data-title="team"]');
    const box = await s.waitFor('[data-testid="composer"]');
    await s.sendKeys(box, "Could you look at this, @fr");
    // "@" offers the room's members.
    const option = await s.waitFor('[data-testid="mention-option"]');
    expect(await s.text(option)).toContain("frank");
    await h.screenshot("mention-completion");
    await s.sendKeys(box, Keys.Enter);
    expect(await s.execute<string>("return arguments[0].value;", [box])).toBe("Could you look at this, @frank ");
    await s.sendKeys(box, Keys.Enter);
    await h.waitForTexts(["Could you look at this, @frank"]);

    await on("frank");
    await waitFor("the @ badge on team", async () => (await row("team"))?.mention === true, 30_000);
    await waitFor("a native notification of the mention", async () =>
      h.notifications().some((n) => n.summary === "erin mentioned you in #team" && n.body.includes("@frank")),
    );
    await h.screenshot("mention-badge");
    await h.openConversation("team");
    await s.waitFor('[data-testid="message"].mentions-me [data-testid="mention"]');
    await waitFor("the badge gone once read", async () => (await row("team"))?.mention === false);
  });

  it("finds a message of another conversation and opens it there", async () => {
    await on("frank");
    await s.type('[data-testid="search"]', "notes");
    const hit = await s.waitFor('[data-testid="search-hit"]');
    expect(await s.text(hit)).toContain("example.org/notes");
    await h.screenshot("search");
    await s.click(hit);
    await s.waitFor('[data-testid="conversation-view"][data-title="erin"]');
    await s.waitFor('[data-testid="message"].flash');
  });

  it("keeps a pasted image in a tray with its preview until it is sent with its caption", async () => {
    await on("erin");
    await h.openConversation("frank");
    const box = await s.waitFor('[data-testid="composer"]');
    // A paste of an image, as the clipboard hands it to the page.
    await s.execute(
      `const bytes = Uint8Array.from(atob(arguments[1]), (c) => c.charCodeAt(0));
       const dt = new DataTransfer();
       dt.items.add(new File([bytes], "pasted.png", { type: "image/png" }));
       arguments[0].dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));`,
      [box, PNG.toString("base64")],
    );
    const preview = await s.waitFor('[data-testid="tray-item"] [data-testid="tray-preview"]');
    await waitFor("the preview to show the image", () => s.execute<boolean>("return arguments[0].complete && arguments[0].naturalWidth === 2;", [preview]));
    await s.sendKeys(box, "the colours");
    await h.screenshot("paste-preview");
    await s.sendKeys(box, Keys.Enter);

    await on("frank");
    const img = await s.waitFor('[data-testid="image"]', 30_000);
    await waitFor("the image to load", () => s.execute<boolean>("return arguments[0].complete && arguments[0].naturalWidth === 2;", [img]));
    await h.waitText("the colours");
  });

  it("opens a conversation at a New messages line", async () => {
    // Frank reads what he has, then looks at another room while erin writes.
    await on("frank");
    await h.openConversation("erin");
    // It opens at what is new; what is below is read once it is scrolled into view.
    await waitFor("everything read", async () => {
      await s.execute(`const t = document.querySelector('[data-testid="timeline"]'); t.scrollTop = t.scrollHeight;`);
      return (await row("erin"))?.unread === "0";
    });
    await h.openConversation("team");
    await on("erin");
    await h.openConversation("frank");
    for (const t of ["One more thing", "about the release", "it ships Friday"]) await h.send(t);
    await h.waitForTexts(["it ships Friday"]);
    await on("frank");
    await waitFor("three unread", async () => (await row("erin"))?.unread === "3");
    await h.openConversation("erin");
    await s.waitFor('[data-testid="unread-line"]');
    // The line sits right before the first of the three.
    expect(
      await s.execute<string>(`return document.querySelector('[data-testid="unread-line"]').nextElementSibling?.querySelector('[data-testid="message-text"]')?.textContent;`),
    ).toBe("One more thing");
    await h.screenshot("new-messages-line");
    // Scrolled up, a button leads back to the latest message.
    await s.execute(`document.querySelector('[data-testid="timeline"]').scrollTop = 0;`);
    await s.clickOn('[data-testid="jump-to-latest"]');
    await waitFor("the bottom in view, and all read", async () => (await row("erin"))?.unread === "0");
  });
});
