// The panel's frame rate under load, from a Chromium trace: a real `lab up` with NODES nodes
// and USERS × 2 virtual devices sending RATE messages/s, the panel open in Debian's Chromium
// (headless, software rendering), a trace of SECONDS recorded through playwright-core. Prints
// the frames drawn per second (the trace's DrawFrame events, and requestAnimationFrame
// callbacks counted in the page), the main thread's busy share and its longest task.
//
//   node bench/framerate.mjs            # NODES=12 USERS=1000 RATE=200 SECONDS=20
//   LAB_BIN=target/release/lab node bench/framerate.mjs
//
// The trace is kept in artifacts/lab/framerate-trace.json (open it in chrome://tracing).

import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const release = join(root, "target/release/lab");
const labBin = process.env.LAB_BIN ?? (existsSync(release) ? release : join(root, "target/debug/lab"));
const nodes = process.env.NODES ?? "12";
const users = process.env.USERS ?? "1000";
const rate = process.env.RATE ?? "200";
const seconds = Number(process.env.SECONDS ?? "20");
const out = join(root, "artifacts/lab");
mkdirSync(out, { recursive: true });
const tracePath = join(out, "framerate-trace.json");

const lab = spawn(labBin, ["up", "--plain", "--panel", "127.0.0.1:0", "--nodes", nodes, "--users", users, "--devices", "2", "--rate", rate], {
  stdio: ["ignore", "pipe", "inherit"],
});
process.on("exit", () => lab.kill("SIGKILL"));
const ready = await new Promise((ok, fail) => {
  createInterface({ input: lab.stdout }).on("line", (l) => {
    if (l.startsWith("LAB_READY ")) ok(JSON.parse(l.slice(10)));
  });
  lab.on("exit", (c) => fail(new Error(`lab up exited (${c})`)));
});
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--headless", "--no-sandbox", "--disable-gpu"] });
const page = await browser.newPage({ viewport: { width: 1500, height: 1100 } });
await page.goto(ready.panel);
const want = Number(users) * 2;
await page.waitForFunction((n) => window.lab.last && window.lab.last.traffic.live >= n && window.lab.last.traffic.sent_per_sec > 0, want, { timeout: 600_000, polling: 1000 });
await page.waitForTimeout(5000);

await page.evaluate(() => {
  window.__frames = 0;
  window.__frames_seen = window.lab.version;
  const tick = () => { window.__frames++; requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
});
await browser.startTracing(page, { path: tracePath, categories: ["devtools.timeline", "disabled-by-default-devtools.timeline.frame", "toplevel"] });
await page.waitForTimeout(seconds * 1000);
await browser.stopTracing();
const inPage = await page.evaluate(() => ({
  raf: window.__frames,
  updates: window.lab.version - window.__frames_seen,
  live: window.lab.last.traffic.live,
  sent: window.lab.last.traffic.sent_per_sec,
  nodes: window.lab.last.cluster.nodes.length,
  verdict: window.lab.last.checker.headline,
}));
await browser.close();
lab.kill("SIGTERM");

const events = JSON.parse(readFileSync(tracePath, "utf8")).traceEvents ?? [];
const draws = events.filter((e) => e.name === "DrawFrame");
const span = (Math.max(...events.map((e) => e.ts ?? 0)) - Math.min(...events.filter((e) => e.ts).map((e) => e.ts))) / 1e6;
// The renderer's main thread: the thread that ran the page's animation frames.
const raf = events.find((e) => e.name === "FireAnimationFrame");
const main = raf ? events.filter((e) => e.pid === raf.pid && e.tid === raf.tid && e.ph === "X" && (e.name === "RunTask" || e.name === "ThreadControllerImpl::RunTask")) : [];
const busy = main.reduce((s, e) => s + (e.dur ?? 0), 0) / 1e6;
const longest = main.reduce((m, e) => Math.max(m, e.dur ?? 0), 0) / 1000;
console.log(`lab: ${inPage.nodes} nodes, ${inPage.live} live devices, ${inPage.sent.toFixed(0)} msg/s sent; ${inPage.verdict}`);
console.log(`trace: ${span.toFixed(1)} s, ${draws.length} DrawFrame = ${(draws.length / span).toFixed(1)} frames/s`);
console.log(`page: ${(inPage.raf / seconds).toFixed(1)} animation frames/s, ${(inPage.updates / seconds).toFixed(1)} lab frames merged/s`);
console.log(`main thread: busy ${((busy / span) * 100).toFixed(0)}% of the time, longest task ${longest.toFixed(1)} ms`);
