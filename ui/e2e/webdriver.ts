// A small W3C WebDriver client over fetch, enough to drive the real desktop app through
// tauri-driver and WebKitWebDriver: sessions, windows, elements, keys, scripts, screenshots.
// No dependency and no browser download; every wait polls with a deadline.

const ELEMENT = "element-6066-11e4-a52e-4f735466cecf";

export interface ElementRef {
  [ELEMENT]: string;
}

export class WebDriverError extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    message: string,
  ) {
    super(`${error}: ${message}`);
  }
}

/** Polls `probe` until it returns something other than null/undefined/false, or fails after
 * `timeoutMs` with a message naming what was awaited and the last error seen. */
export async function waitFor<T>(what: string, probe: () => Promise<T | null | undefined | false>, timeoutMs = 20_000, everyMs = 150): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  for (;;) {
    try {
      const value = await probe();
      if (value !== null && value !== undefined && value !== false) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${String(last)})` : ""}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export class Session {
  constructor(
    readonly base: string,
    readonly id: string,
  ) {}

  static async create(base: string, capabilities: Record<string, unknown>): Promise<Session> {
    const value = await request<{ sessionId: string }>(base, "POST", "/session", { capabilities: { alwaysMatch: capabilities } });
    return new Session(base, value.sessionId);
  }

  private cmd<T>(method: string, path: string, body?: unknown): Promise<T> {
    return request<T>(this.base, method, `/session/${this.id}${path}`, body);
  }

  async delete(): Promise<void> {
    await this.cmd("DELETE", "");
  }

  // Windows ---------------------------------------------------------------------------------

  windowHandle = () => this.cmd<string>("GET", "/window");
  windowHandles = () => this.cmd<string[]>("GET", "/window/handles");
  switchTo = (handle: string) => this.cmd<null>("POST", "/window", { handle });
  closeWindow = () => this.cmd<string[]>("DELETE", "/window");
  title = () => this.cmd<string>("GET", "/title");

  // Elements --------------------------------------------------------------------------------

  find = (css: string) => this.cmd<ElementRef>("POST", "/element", { using: "css selector", value: css });
  findAll = (css: string) => this.cmd<ElementRef[]>("POST", "/elements", { using: "css selector", value: css });
  click = (el: ElementRef) => this.cmd<null>("POST", `/element/${el[ELEMENT]}/click`, {});
  clear = (el: ElementRef) => this.cmd<null>("POST", `/element/${el[ELEMENT]}/clear`, {});
  /** The element's rendered text, read in the page (see `waitFor` on "displayed"). */
  text = (el: ElementRef) => this.execute<string>("return arguments[0].innerText;", [el]);
  attr = (el: ElementRef, name: string) => this.cmd<string | null>("GET", `/element/${el[ELEMENT]}/attribute/${name}`);
  displayed = (el: ElementRef) => this.cmd<boolean>("GET", `/element/${el[ELEMENT]}/displayed`);
  sendKeys = (el: ElementRef, text: string) => this.cmd<null>("POST", `/element/${el[ELEMENT]}/value`, { text });

  /** Moves the mouse pointer over an element (its centre), as a person hovering it would. */
  hover = (el: ElementRef) =>
    this.cmd<null>("POST", "/actions", {
      actions: [{ type: "pointer", id: "mouse", parameters: { pointerType: "mouse" }, actions: [{ type: "pointerMove", duration: 0, origin: el, x: 0, y: 0 }] }],
    });

  /** Runs a script in the page; `arguments` are passed as JSON. */
  execute = <T>(script: string, args: unknown[] = []) => this.cmd<T>("POST", "/execute/sync", { script, args });
  executeAsync = <T>(script: string, args: unknown[] = []) => this.cmd<T>("POST", "/execute/async", { script, args });

  /** The window as a PNG. */
  async screenshot(): Promise<Buffer> {
    const b64 = await this.cmd<string>("GET", "/screenshot");
    return Buffer.from(b64, "base64");
  }

  // Conveniences ----------------------------------------------------------------------------

  /** Waits for an element to exist and be rendered (it has a box and is not `visibility:
   * hidden`). Checked in the page in one round trip: WebKitWebDriver's own "displayed" answer
   * is unreliable for windows that are behind others. */
  waitFor(css: string, timeoutMs = 20_000): Promise<ElementRef> {
    return waitFor(`element ${css}`, () =>
      this.execute<ElementRef | null>(
        `return [...document.querySelectorAll(arguments[0])].find((el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden") ?? null;`,
        [css],
      ),
    timeoutMs);
  }

  /** Waits for a script to return something truthy. */
  waitUntil<T>(what: string, script: string, args: unknown[] = [], timeoutMs = 20_000): Promise<T> {
    return waitFor(what, () => this.execute<T>(script, args), timeoutMs);
  }

  async clickOn(css: string, timeoutMs?: number): Promise<void> {
    await this.click(await this.waitFor(css, timeoutMs));
  }

  /** Empties a text field the way typing would (an `input` event, so the page sees it). */
  async empty(el: ElementRef): Promise<void> {
    await this.execute(
      `arguments[0].value = ""; arguments[0].dispatchEvent(new Event("input", { bubbles: true }));`,
      [el],
    );
  }

  async type(css: string, text: string): Promise<void> {
    const el = await this.waitFor(css);
    await this.empty(el);
    await this.sendKeys(el, text);
  }
}

/** WebDriver key codes. */
export const Keys = { Null: "\uE000", Enter: "\uE007", Shift: "\uE008", Escape: "\uE00C" } as const;

async function request<T>(base: string, method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: body === undefined ? undefined : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json: { value?: unknown } = {};
  try {
    json = JSON.parse(text) as { value?: unknown };
  } catch {
    throw new WebDriverError(res.status, "bad response", text.slice(0, 300));
  }
  const value = json.value as { error?: string; message?: string } | undefined;
  if (!res.ok || (value && typeof value === "object" && "error" in value && value.error)) {
    throw new WebDriverError(res.status, value?.error ?? "error", value?.message ?? text.slice(0, 300));
  }
  return json.value as T;
}
