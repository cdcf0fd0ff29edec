// Message formatting: a small, forgiving subset of Markdown, read into a tree the timeline
// draws as elements (never as HTML, so nothing in a message can become markup):
//
//   **bold**   *italic* or _italic_   ~~struck~~   `code`   ```a code block```
//   links (http://, https://, mailto:, www.) and @mentions are found in plain text.
//
// Markers only count around words (`2*3*4` and `snake_case_name` stay as they are), and an
// unclosed marker is plain text.

export type Node =
  | { t: "text"; s: string }
  | { t: "code"; s: string }
  | { t: "pre"; s: string }
  | { t: "strong" | "em" | "del"; c: Node[] }
  | { t: "link"; href: string; s: string }
  | { t: "mention"; user: string };

const LINK = /\b(?:https?:\/\/|mailto:|www\.)[^\s<>"]+/gi;
const MENTION = /(^|[^\w@.])@([a-z0-9][a-z0-9_.-]{1,31}[a-z0-9_])/gi;
/** Punctuation that ends a sentence rather than a link. */
const TRAILING = /[.,;:!?'")\]}]+$/;

/** Reads a message's text into formatted nodes. */
export function parse(text: string): Node[] {
  const out: Node[] = [];
  // Code blocks first: nothing inside them is formatted.
  const parts = text.split(/```/);
  parts.forEach((part, i) => {
    const inBlock = i % 2 === 1 && i < parts.length - 1;
    if (inBlock) out.push({ t: "pre", s: part.replace(/^[a-z0-9+-]*\n/i, "").replace(/\n$/, "") });
    else out.push(...inline(i % 2 === 1 ? "```" + part : part));
  });
  return merge(out);
}

/** Inline code, then emphasis, then links and mentions in the plain runs. */
function inline(text: string): Node[] {
  const out: Node[] = [];
  const re = /`([^`\n]+)`/g;
  let last = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    out.push(...emphasis(text.slice(last, m.index)));
    out.push({ t: "code", s: m[1]! });
    last = m.index + m[0].length;
  }
  out.push(...emphasis(text.slice(last)));
  return out;
}

const MARKERS: { open: string; t: "strong" | "em" | "del" }[] = [
  { open: "**", t: "strong" },
  { open: "~~", t: "del" },
  { open: "*", t: "em" },
  { open: "_", t: "em" },
];

/** Whether position `i` of `s` may open (before a word) or close (after a word) a marker. */
function opens(s: string, i: number, len: number): boolean {
  const before = s[i - 1];
  const after = s[i + len];
  return after !== undefined && !/[\s*_~]/.test(after) && (before === undefined || !/[\w*_~]/.test(before));
}
function closes(s: string, i: number, len: number): boolean {
  const before = s[i - 1];
  const after = s[i + len];
  return before !== undefined && !/[\s*_~]/.test(before) && (after === undefined || !/[\w*_~]/.test(after));
}

function emphasis(s: string): Node[] {
  for (let i = 0; i < s.length; i++) {
    for (const { open, t } of MARKERS) {
      if (!s.startsWith(open, i) || !opens(s, i, open.length)) continue;
      for (let j = s.indexOf(open, i + open.length + 1); j !== -1; j = s.indexOf(open, j + 1)) {
        if (closes(s, j, open.length)) {
          return [...plain(s.slice(0, i)), { t, c: emphasis(s.slice(i + open.length, j)) }, ...emphasis(s.slice(j + open.length))];
        }
      }
    }
  }
  return plain(s);
}

/** Links and mentions in text with no other formatting. */
function plain(s: string): Node[] {
  if (!s) return [];
  const out: Node[] = [];
  let last = 0;
  for (const m of s.matchAll(LINK)) {
    let url = m[0];
    const trail = TRAILING.exec(url)?.[0] ?? "";
    // A closing parenthesis belongs to the link when the link opened one.
    const keep = trail.startsWith(")") && url.includes("(") ? 1 : 0;
    url = url.slice(0, url.length - trail.length + keep);
    out.push(...mentions(s.slice(last, m.index)));
    out.push({ t: "link", href: url.toLowerCase().startsWith("www.") ? `https://${url}` : url, s: url });
    last = m.index! + url.length;
  }
  out.push(...mentions(s.slice(last)));
  return out;
}

function mentions(s: string): Node[] {
  if (!s) return [];
  const out: Node[] = [];
  let last = 0;
  for (const m of s.matchAll(MENTION)) {
    const at = m.index! + m[1]!.length;
    if (at > last) out.push({ t: "text", s: s.slice(last, at) });
    out.push({ t: "mention", user: m[2]!.toLowerCase() });
    last = at + 1 + m[2]!.length;
  }
  if (last < s.length) out.push({ t: "text", s: s.slice(last) });
  return out;
}

/** Joins neighbouring text runs. */
function merge(nodes: Node[]): Node[] {
  const out: Node[] = [];
  for (const n of nodes) {
    const prev = out[out.length - 1];
    if (n.t === "text" && prev?.t === "text") out[out.length - 1] = { t: "text", s: prev.s + n.s };
    else if (n.t !== "text" || n.s) out.push(n);
  }
  return out;
}

/** The usernames a text mentions, lower case, each once. */
export function mentioned(text: string): string[] {
  const users = new Set<string>();
  const walk = (nodes: Node[]) => {
    for (const n of nodes) {
      if (n.t === "mention") users.add(n.user);
      else if (n.t === "strong" || n.t === "em" || n.t === "del") walk(n.c);
    }
  };
  walk(parse(text));
  return [...users];
}

/** A text without its formatting marks, as a one-line preview shows it. */
export function plainText(text: string): string {
  const walk = (nodes: Node[]): string =>
    nodes
      .map((n) => {
        switch (n.t) {
          case "text":
          case "code":
          case "pre":
            return n.s;
          case "link":
            return n.s;
          case "mention":
            return `@${n.user}`;
          default:
            return walk(n.c);
        }
      })
      .join("");
  return walk(parse(text));
}

/** Whether a link may be opened outside the app (the system's browser or mail client). */
export function openable(href: string): boolean {
  return /^(https?:\/\/|mailto:)/i.test(href);
}
