// What the panel's browser tests share: where the built lab and the screenshots are, starting
// a real `lab up` and reading its ready line, and Debian's Chromium, headless.

import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const root = resolve(here, "../../..");
export const labBin = process.env.LAB_BIN ?? join(root, "target/debug/lab");
export const shots = join(root, "artifacts/lab");
mkdirSync(shots, { recursive: true });

/** Starts `lab up` on a free loopback port for its panel; `ready` resolves with its ready line
 * once both the cluster and the panel serve, `exited` with how the process ended. */
export function labUp(args) {
  const child = spawn(labBin, ["up", "--plain", "--panel", "127.0.0.1:0", ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = [];
  const ready = new Promise((resolveReady, reject) => {
    const rl = createInterface({ input: child.stdout });
    rl.on("line", (line) => {
      lines.push(line);
      if (line.startsWith("LAB_READY ")) resolveReady(JSON.parse(line.slice("LAB_READY ".length)));
    });
    child.on("exit", (code) => reject(new Error(`lab up exited (${code}) before it was ready:\n${lines.join("\n")}`)));
  });
  const exited = new Promise((r) => child.on("exit", (code, signal) => r({ code, signal })));
  return { child, ready, lines, exited };
}

/** Debian's Chromium, headless (never a downloaded browser), closed when the test ends. */
export async function launchChromium(t) {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu"],
  });
  t.after(() => browser.close());
  return browser;
}
