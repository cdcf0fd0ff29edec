import { describe, expect, it } from "vitest";
import { mentioned, openable, parse, plainText } from "./markup";

describe("message formatting", () => {
  it("reads bold, italic, struck and code", () => {
    expect(parse("a **b** *c* _d_ ~~e~~ `f*g*`")).toEqual([
      { t: "text", s: "a " },
      { t: "strong", c: [{ t: "text", s: "b" }] },
      { t: "text", s: " " },
      { t: "em", c: [{ t: "text", s: "c" }] },
      { t: "text", s: " " },
      { t: "em", c: [{ t: "text", s: "d" }] },
      { t: "text", s: " " },
      { t: "del", c: [{ t: "text", s: "e" }] },
      { t: "text", s: " " },
      { t: "code", s: "f*g*" },
    ]);
  });

  it("leaves markers inside words and unclosed ones alone", () => {
    expect(parse("2*3*4 snake_case_name *not closed")).toEqual([{ t: "text", s: "2*3*4 snake_case_name *not closed" }]);
    expect(parse("** nothing **")).toEqual([{ t: "text", s: "** nothing **" }]);
  });

  it("keeps code blocks as they are", () => {
    expect(parse("see:\n```js\nlet a = **b**;\n```\ndone")).toEqual([
      { t: "text", s: "see:\n" },
      { t: "pre", s: "let a = **b**;" },
      { t: "text", s: "\ndone" },
    ]);
  });

  it("finds links without the punctuation after them", () => {
    expect(parse("go to https://example.org/a?b=1. Or (www.rust-lang.org)!")).toEqual([
      { t: "text", s: "go to " },
      { t: "link", href: "https://example.org/a?b=1", s: "https://example.org/a?b=1" },
      { t: "text", s: ". Or (" },
      { t: "link", href: "https://www.rust-lang.org", s: "www.rust-lang.org" },
      { t: "text", s: ")!" },
    ]);
    expect(parse("https://en.wikipedia.org/wiki/Rust_(programming_language)")[0]).toMatchObject({ href: "https://en.wikipedia.org/wiki/Rust_(programming_language)" });
  });

  it("never makes markup of what is written", () => {
    const nodes = parse('<img src=x onerror="alert(1)"> **<b>hi</b>**');
    expect(nodes[0]).toEqual({ t: "text", s: '<img src=x onerror="alert(1)"> ' });
    expect(nodes[1]).toEqual({ t: "strong", c: [{ t: "text", s: "<b>hi</b>" }] });
    expect(openable("javascript:alert(1)")).toBe(false);
    expect(openable("https://example.org")).toBe(true);
  });

  it("reads as plain text in previews", () => {
    expect(plainText("**Release** is `v1.2`, see _notes_ @Bob")).toBe("Release is v1.2, see notes @bob");
  });

  it("finds mentions, not e-mail addresses", () => {
    expect(mentioned("@Bob and @carol.x, but not bob@example.org or @a")).toEqual(["bob", "carol.x"]);
    expect(parse("hi @bob!")).toEqual([{ t: "text", s: "hi " }, { t: "mention", user: "bob" }, { t: "text", s: "!" }]);
  });
});
