// The installed .deb (scripts/desktop-deb-test.sh): /usr/bin/chat-desktop starts its local
// cluster with the packaged sidecar, two users register in two windows, and a message goes
// both ways. Screenshots go to artifacts/desktop/installed-*.png.

import { afterAll, describe, expect, it } from "vitest";
import { appBinary, Harness } from "./harness";
import { type Session, waitFor } from "./webdriver";

const h = new Harness("installed");
let s: Session;

afterAll(async () => {
  await h.stop();
});

describe("the installed package", () => {
  it("starts its own cluster from the packaged sidecar and chats", async () => {
    expect(appBinary()).toBe("/usr/bin/chat-desktop");
    s = await h.start();
    const ann = await s.windowHandle();
    await s.clickOn('[data-testid="start-local"]');
    await h.register("ann", "ann-laptop");
    const cluster = await waitFor("cluster.json", async () => h.cluster(), 30_000);
    expect(cluster.nodes).toHaveLength(3);
    const ben = await h.openDeviceWindow();
    await h.register("ben", "ben-desktop");

    await s.switchTo(ann);
    await h.newChat("ben");
    await h.send("Installed from the .deb");
    await h.waitForTexts(["Installed from the .deb"]);
    await s.switchTo(ben);
    await h.openConversation("ann", 30_000);
    await h.waitForTexts(["Installed from the .deb"]);
    await h.send("And it chats");
    await s.switchTo(ann);
    await h.waitForTexts(["Installed from the .deb", "And it chats"]);
    await h.screenshotWindows("two-users", [ann, ben]);
  });
});
