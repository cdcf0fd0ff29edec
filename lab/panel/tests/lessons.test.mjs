// A lesson walked through in the panel, in a real browser against a real `lab up --teaching`:
// "A load balancer is not a cluster" started with one click, the teacher advancing its steps.
// Step 1 (no bus): the teaching mode shows, the checker turns red and the narration says what
// was lost; step 2 (the bus): green; the lesson's summary lands in the run's report.
// Screenshots of each step go to artifacts/lab/lesson-*.png.
//
// Needs the built lab and server binaries (target/debug, or LAB_BIN) with the panel built in.

import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { labUp, launchChromium, shots } from "./harness.mjs";

const PATIENCE = 90_000;

test("a lesson in the panel: the mistake red, the fix green, step by step", { timeout: 300_000 }, async (t) => {
  const lab = labUp(["--teaching", "--nodes", "3"]);
  t.after(() => lab.child.kill("SIGKILL"));
  const ready = await lab.ready;
  const browser = await launchChromium(t);
  const page = await (await browser.newContext({ viewport: { width: 1500, height: 1150 } })).newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(ready.panel);

  const until = (what, fn, arg) =>
    page.waitForFunction(fn, arg, { timeout: PATIENCE, polling: 250 }).catch(async (e) => {
      const state = await page.evaluate(() => ({
        status: document.querySelector("#lesson-status")?.textContent,
        narration: document.querySelector("#narration-text")?.textContent,
        verdict: document.querySelector("#verdict")?.textContent,
      }));
      throw new Error(`${what}: ${e.message}\nstate: ${JSON.stringify(state)}\nlog: ${lab.lines.slice(-15).join("\n")}`);
    });

  // The lessons are listed; pick one and start it with one click.
  await until("the lessons listed", () => document.querySelectorAll("#lesson-pick option").length >= 7);
  await page.selectOption("#lesson-pick", "lb-is-not-a-cluster");
  assert.equal(await page.isChecked("#lesson-teacher"), true);
  await page.screenshot({ path: join(shots, "lesson-0-chosen.png") });
  await page.click("#lesson-start");

  // Step 1: no bus. The teaching mode shows, the checker goes red, the narration has the verdict.
  await until("step 1 judged and waiting for the teacher", () => {
    const bar = document.querySelector("#lessons-bar");
    const text = document.querySelector("#narration-text")?.textContent ?? "";
    return bar?.dataset.waiting === "true" && text.includes("checker red");
  });
  assert.match(await page.textContent("#narration-title"), /A load balancer is not a cluster/);
  assert.match(await page.textContent("#narration-steps li[aria-current=step]"), /no bus/);
  assert.match(await page.textContent("#teaching-mode"), /teaching mode: no bus between nodes/);
  assert.equal(await page.getAttribute("#verdict", "data-level"), "bad");
  assert.match(await page.textContent("#verdict"), /LOST/);
  await page.screenshot({ path: join(shots, "lesson-1-no-bus-red.png") });

  // Step 2: the teacher presses "Next step"; the bus is back and the checker green.
  await page.click("#lesson-next");
  await until("the lesson done and shown", () => document.querySelector("#lessons-bar")?.dataset.passed === "true");
  await until("the teaching mode off", () => document.querySelector("#teaching-mode")?.hidden === true);
  assert.match(await page.textContent("#narration-text"), /checker green/);
  assert.equal(await page.getAttribute("#verdict", "data-level"), "ok");
  await page.screenshot({ path: join(shots, "lesson-2-bus-green.png") });

  // The summary is in the run's report.
  const report = await (await fetch(new URL("/api/report.json", ready.panel))).json();
  const summary = report.lessons.find((l) => l.name === "lb-is-not-a-cluster");
  assert.ok(summary?.passed, JSON.stringify(report.lessons));
  assert.deepEqual(errors, []);
});
