/// <reference types="node" />
// The commands the UI calls are exactly the ones Rust registers: `src-tauri/src/commands/mod.rs`
// holds the one list (its `generate_handler!`, from which build.rs also makes the permissions
// and the capability); this file's typed wrappers must name the same commands, no more, no less.

import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";

const here = (path: string) => resolve(__dirname, path);

/** The command names of the Rust list: the last segment of each path. */
export function rustCommands(source: string): string[] {
  const list = source.match(/generate_handler!\[([^\]]*)\]/)?.[1] ?? "";
  return list
    .split(",")
    .map((path) => path.trim())
    .filter(Boolean)
    .map((path) => path.split("::").pop()!);
}

/** The command names the UI's wrappers invoke. */
export function uiCommands(source: string): string[] {
  return [...source.matchAll(/\b(?:call|invoke)(?:<[^>]*>)?\(\s*"([a-z_]+)"/g)].map((m) => m[1]!);
}

describe("the command list", () => {
  it("is the same on both sides of the bridge", () => {
    const rust = rustCommands(readFileSync(here("../../../src-tauri/src/commands/mod.rs"), "utf8"));
    const ui = uiCommands(readFileSync(here("./commands.ts"), "utf8"));
    expect(rust.length).toBeGreaterThan(10);
    expect(new Set(rust).size, "a command listed twice in Rust").toBe(rust.length);
    expect([...new Set(ui)].sort()).toEqual([...rust].sort());
  });

  it("is read from both sources as written", () => {
    expect(rustCommands("tauri::generate_handler![\n  a::one,\n  b::two_words,\n]")).toEqual(["one", "two_words"]);
    expect(uiCommands(`call<Boot>("bootstrap"); invoke<string>("send_attachment", bytes)`)).toEqual(["bootstrap", "send_attachment"]);
  });
});
