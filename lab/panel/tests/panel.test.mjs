// The lab panel in a real browser (Debian's Chromium through playwright-core) against a real
// `lab up`: 3 nodes and 20 virtual devices. Kill a node from the panel (it turns dead, its
// devices move, the checker stays green), cut a node's bus (the path changes, the resync
// fills the gap), switch to fanout (msgs-per-op rises to the node count), export the report
// and read it. Screenshots of each step go to artifacts/lab/.
//
// Needs the built lab and server binaries (target/debug, or LAB_BIN) with the panel built in:
// `npm run build` here before `cargo build -p lab` (scripts/test does both).

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { labBin, labUp, launchChromium, shots } from "./harness.mjs";

const PATIENCE = 60_000;

test("the panel drives a real cluster: kill, cut the bus, fanout, export", { timeout: 360_000 }, async (t) => {
  const lab = labUp(["--nodes", "3", "--users", "10", "--devices", "2", "--rate", "20"]);
  t.after(() => lab.child.kill("SIGKILL"));
  const ready = await lab.ready;
  const browser = await launchChromium(t);
  const context = await browser.newContext({ viewport: { width: 1500, height: 1150 }, acceptDownloads: true });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(ready.panel);

  const until = (what, fn, arg) =>
    page.waitForFunction(fn, arg, { timeout: PATIENCE, polling: 200 }).catch(async (e) => {
      const state = await page.evaluate(() => {
        const u = window.lab.last;
        return u && { nodes: u.cluster.nodes.map((n) => [n.slot, n.state, n.devices, n.bus_cut]), traffic: u.traffic, checker: u.checker.headline };
      });
      throw new Error(`${what}: ${e.message}\nstate: ${JSON.stringify(state)}\nlog: ${lab.lines.slice(-15).join("\n")}`);
    });
  /** Clicks a control and waits for the lab's answer to the operation it posts. */
  const clickOp = async (selector) => {
    const answers = Number((await page.locator("#op-result").getAttribute("data-answers")) ?? 0);
    await page.click(selector);
    await until(`the answer to ${selector}`, (n) => Number(document.querySelector("#op-result").dataset.answers ?? 0) > n, answers);
    return page.locator("#op-result").textContent();
  };
  const row = (slot) => page.locator(`#nodes tr[data-slot="${slot}"]`);
  const verdictLevel = () => page.locator("#verdict").getAttribute("data-level");

  // 1. Three live nodes, twenty live devices, traffic judged green.
  await until("3 live nodes and 20 live devices", () => {
    const u = window.lab.last;
    return u && u.cluster.nodes.filter((n) => n.state === "live").length === 3 && u.traffic.live === 20 && u.checker.delivered > 50;
  });
  await until("a sampled message on the timeline", () => document.querySelectorAll("#messages li").length > 0);
  assert.equal(await page.locator("#nodes tbody tr").count(), 3);
  assert.equal(await verdictLevel(), "ok", await page.locator("#verdict").textContent());
  const routedMpo = await page.evaluate(() => window.lab.last.checker.msgs_per_op);
  await page.screenshot({ path: join(shots, "01-started.png"), fullPage: true });

  // 2. Kill the node with most devices from the panel: dead, its devices elsewhere, green.
  const victim = await page.evaluate(() =>
    [...window.lab.last.cluster.nodes].sort((a, b) => b.devices - a.devices)[0].slot);
  const moved = await page.evaluate((v) => window.lab.devices.devices.filter((d) => d[1] === v).map((d) => d[3]), victim);
  assert.ok(moved.length > 0, "the victim had devices");
  await row(victim).locator('button[data-op="kill"]').click();
  await until("the victim dead with no device, 20 live elsewhere", (v) => {
    const u = window.lab.last;
    const n = u.cluster.nodes.find((x) => x.slot === v);
    return n.state === "dead" && n.devices === 0 && u.traffic.live === 20;
  }, victim);
  await page.locator(`#nodes tr[data-slot="${victim}"][data-state="dead"]`).waitFor({ timeout: PATIENCE });
  const where = await page.evaluate((ids) => window.lab.devices.devices.filter((d) => ids.includes(d[3])).map((d) => d[1]), moved);
  assert.ok(where.every((n) => n && n !== victim), `its devices moved: ${where}`);
  await until("the registry's notice timed", () => window.lab.last.presence.notices.some((n) => n.noticed_after_ms !== undefined));
  await until("failovers timed", () => window.lab.last.checker.failover.count > 0);
  await clickOp("#settle");
  assert.notEqual(await verdictLevel(), "bad", await page.locator("#verdict").textContent());
  await page.screenshot({ path: join(shots, "02-killed.png"), fullPage: true });

  // Back to three nodes for what follows.
  await row(victim).locator('button[data-op="restart"]').click();
  await until("the victim live again", (v) => window.lab.last.cluster.nodes.find((x) => x.slot === v).state === "live", victim);

  // 3. Cut a node's bus: it stays up, marked cut; after the restore its devices catch up
  //    from the store (a sampled message's path goes store → node), and nothing is lost.
  const cut = victim === "n1" ? "n2" : "n1";
  const storeBefore = await page.evaluate(() => window.lab.paths.store);
  await row(cut).locator('button[data-op="cut_bus"]').click();
  await until("the node's bus cut", (s) => window.lab.last.cluster.nodes.find((x) => x.slot === s).bus_cut, cut);
  await page.locator(`#nodes tr[data-slot="${cut}"][data-bus-cut="true"]`).waitFor({ timeout: PATIENCE });
  await page.screenshot({ path: join(shots, "03-bus-cut.png"), fullPage: true });
  await page.waitForTimeout(3000);
  await row(cut).locator('button[data-op="restore_bus"]').click();
  await until("the bus back", (s) => !window.lab.last.cluster.nodes.find((x) => x.slot === s).bus_cut, cut);
  await until("a delivery from the store (the resync filled the gap)", (before) => window.lab.paths.store > before, storeBefore);
  await until("the checker judging everything delivered", () => window.lab.last.checker.pending === 0 || window.lab.last.checker.verdict === "ok");
  assert.notEqual(await verdictLevel(), "bad", await page.locator("#verdict").textContent());
  // Show a message that took the store path, frozen on the timeline.
  await page.evaluate(() => {
    const m = [...window.lab.messages].reverse().find((x) => x.steps.some((s) => s.what === "gap_filled" || s.what === "replayed"));
    if (m) document.querySelector(`#messages li[data-id="${m.id}"]`)?.dispatchEvent(new MouseEvent("click", { bubbles: true }));
  });
  await page.waitForTimeout(600);
  await page.screenshot({ path: join(shots, "04-resync.png"), fullPage: true });

  // 4. Fanout: every envelope to every node; msgs-per-op rises to the node count.
  await clickOp("#routing-fanout");
  await until("fanout routing", () => window.lab.last.cluster.backends.routing === "fanout");
  await until("every node live again", () => window.lab.last.cluster.nodes.filter((n) => n.state === "live").length === 3 && window.lab.last.traffic.live === 20);
  await clickOp("#reset-checker");
  await until("the checker reset", () => window.lab.last.checker.ops_sampled < 20);
  await until("msgs-per-op over 20 fanout messages", () => window.lab.last.checker.ops_sampled >= 20);
  const fanoutMpo = await page.evaluate(() => window.lab.last.checker.msgs_per_op);
  assert.ok(fanoutMpo > 2.7 && fanoutMpo <= 3.0, `fanout on 3 nodes: ${fanoutMpo}`);
  assert.ok(routedMpo === undefined || routedMpo < fanoutMpo, `routed ${routedMpo} < fanout ${fanoutMpo}`);
  await until("msgs-per-op shown", () => Number(document.querySelector("#msgs-per-op").textContent) > 2.7);
  await page.screenshot({ path: join(shots, "05-fanout.png"), fullPage: true });

  // 5. A burst of 200 logins, shared out by least connections.
  const before = await page.evaluate(() => window.lab.assignments.length);
  const burst = await clickOp("#burst");
  assert.match(burst, /burst: 200 devices logged in/);
  await until("200 answers seen", (n) => window.lab.assignments.length >= n + 200, before);
  const spread = await page.evaluate((n) => {
    const counts = {};
    for (const a of window.lab.assignments.slice(n)) counts[a.chosen.node] = (counts[a.chosen.node] ?? 0) + 1;
    return counts;
  }, before);
  assert.equal(Object.keys(spread).length, 3, `every node got some: ${JSON.stringify(spread)}`);
  assert.ok(Object.values(spread).every((k) => k >= 20), `spread: ${JSON.stringify(spread)}`);
  await page.screenshot({ path: join(shots, "06-burst.png"), fullPage: true });
  await clickOp("#end-burst");

  // 6. Export: the JSON and the HTML report, downloaded from the panel.
  const [json] = await Promise.all([page.waitForEvent("download"), page.click("#export-json")]);
  const report = JSON.parse(readFileSync(await json.path(), "utf8"));
  assert.equal(report.run, await page.evaluate(() => window.lab.run));
  assert.equal(report.cluster.backends.routing, "fanout");
  assert.ok(report.checker.delivered > 0 && report.checker.lost === 0, report.checker.headline);
  assert.ok(report.log.some((l) => l.text.includes(`${victim} killed`)), "the kill is in the log");
  assert.ok(report.presence.notices.some((n) => n.cause === "kill" && n.noticed_after_ms !== undefined));
  assert.ok(report.series.length > 5, "a series per second");
  const [html] = await Promise.all([page.waitForEvent("download"), page.click("#export-html")]);
  const htmlPath = join(shots, "report.html");
  await html.saveAs(htmlPath);
  const text = readFileSync(htmlPath, "utf8");
  assert.ok(text.includes("<svg") && text.includes('id="verdict"') && text.includes(`${victim} killed`));
  const reportPage = await context.newPage();
  await reportPage.goto(`file://${htmlPath}`);
  const embedded = JSON.parse(await reportPage.locator("#report").textContent());
  assert.equal(embedded.run, report.run);
  await reportPage.screenshot({ path: join(shots, "07-report.png"), fullPage: true });

  assert.deepEqual(errors, [], "no script error in the panel");
  lab.child.kill("SIGTERM");
  const exit = await lab.exited;
  assert.equal(exit.code, 0, lab.lines.slice(-10).join("\n"));
});

test("the panel reconnects when the lab restarts", { timeout: 180_000 }, async (t) => {
  // The first lab picks a free port; the second is started on the same one.
  const first = labUp(["--nodes", "1"]);
  t.after(() => first.child.kill("SIGKILL"));
  const ready = await first.ready;
  const browser = await launchChromium(t);
  const page = await browser.newPage();
  await page.goto(ready.panel);
  await page.waitForFunction(() => document.querySelector("#conn").dataset.ok === "true", null, { timeout: PATIENCE });
  const run = await page.evaluate(() => window.lab.run);
  first.child.kill("SIGTERM");
  await first.exited;
  await page.waitForFunction(() => document.querySelector("#conn").dataset.ok === "false", null, { timeout: PATIENCE });
  const addr = new URL(ready.panel).host;
  const second = spawn(labBin, ["up", "--plain", "--panel", addr, "--nodes", "1"], { stdio: ["ignore", "ignore", "inherit"] });
  t.after(() => second.kill("SIGKILL"));
  await page.waitForFunction((old) => window.lab.run && window.lab.run !== old && document.querySelector("#conn").dataset.ok === "true", run, { timeout: PATIENCE });
  assert.equal(await page.locator("#nodes tbody tr").count(), 1);
  second.kill("SIGTERM");
  await new Promise((r) => second.on("exit", r));
});
