// The app follows the desktop's theme: with GTK set to dark, the UI is dark.
import { afterAll, expect, it } from "vitest";
import { Harness } from "./harness";

const h = new Harness("theme", { GTK_THEME: "Adwaita:dark" });
afterAll(() => h.stop());

it("follows a dark system theme", async () => {
  const s = await h.start();
  await s.waitFor('[data-testid="first-run"]');
  expect(await s.execute<boolean>("return matchMedia('(prefers-color-scheme: dark)').matches;")).toBe(true);
  const background = await s.execute<string>("return getComputedStyle(document.querySelector('.center-screen')).backgroundColor;");
  const [r, g, b] = (background.match(/\d+/g) ?? []).map(Number);
  expect((r! + g! + b!) / 3, `background ${background}`).toBeLessThan(64);
  await h.screenshot("dark-first-run");
});
