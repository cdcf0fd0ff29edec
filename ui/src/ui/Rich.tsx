// A message's text, formatted (see `model/markup`): every node becomes an element, so nothing
// a message says can become markup. Links open in the system's browser, through Rust; a
// mention of me stands out.

import type { ComponentChildren } from "preact";
import { type Node, openable, parse } from "../model/markup";

export function Rich({ text, me, onLink }: { text: string; me: string | null; onLink: (href: string) => void }) {
  return <>{draw(parse(text), me, onLink)}</>;
}

function draw(nodes: Node[], me: string | null, onLink: (href: string) => void): ComponentChildren[] {
  return nodes.map((n, i) => {
    switch (n.t) {
      case "text":
        return n.s;
      case "code":
        return <code key={i}>{n.s}</code>;
      case "pre":
        return <pre key={i}>{n.s}</pre>;
      case "strong":
        return <strong key={i}>{draw(n.c, me, onLink)}</strong>;
      case "em":
        return <em key={i}>{draw(n.c, me, onLink)}</em>;
      case "del":
        return <del key={i}>{draw(n.c, me, onLink)}</del>;
      case "mention":
        return (
          <span key={i} class={`mention${n.user === me ? " of-me" : ""}`} data-testid="mention">
            @{n.user}
          </span>
        );
      case "link":
        return openable(n.href) ? (
          <a
            key={i}
            href={n.href}
            title={n.href}
            data-testid="link"
            onClick={(e) => {
              e.preventDefault();
              onLink(n.href);
            }}
          >
            {n.s}
          </a>
        ) : (
          n.s
        );
    }
  });
}
