// The lessons bar: pick a lesson, start it on this lab with one click, and (when the teacher
// advances the steps) go to the next step. The narration box and the verdict line show the
// rest: the lesson narrates through the stream like everything else.

import "./lessons.css";

interface LessonInfo { name: string; title: string; article: string; about: string; steps: string[] }
interface OpResult { ok: boolean; message: string }
interface LessonStatus { name?: string; running: boolean; waiting: boolean; summary?: { name: string; passed: boolean; lines: string[] } }

// What each teaching mode breaks (protocol::teaching::Teaching::broken).
const BROKEN: Record<string, string> = {
  "no-bus": "no bus between nodes: only devices on the same node get messages",
  "bus-only": "no resync and no gap filling: what the bus drops is lost",
  "shared-queue": "one shared queue for every node: each node sees only a share of the messages",
  "arrival-order": "messages shown in arrival order, not by seq",
  "naive-least-connections": "least connections by a locked scan of lagging counts, without reservations",
};

async function post(url: string, body?: unknown): Promise<OpResult> {
  const r = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return r.json() as Promise<OpResult>;
}

export function mountLessons(root: HTMLElement): void {
  root.innerHTML = `
    <label>Lesson <select id="lesson-pick"></select></label>
    <label title="Each step waits for you"><input type="checkbox" id="lesson-teacher" checked> I advance the steps</label>
    <button id="lesson-start">Start lesson</button>
    <button id="lesson-next" disabled>Next step</button>
    <span id="lesson-status" role="status"></span>
    <span id="teaching-mode" class="teaching" hidden></span>`;
  const pick = root.querySelector<HTMLSelectElement>("#lesson-pick")!;
  const teacher = root.querySelector<HTMLInputElement>("#lesson-teacher")!;
  const start = root.querySelector<HTMLButtonElement>("#lesson-start")!;
  const next = root.querySelector<HTMLButtonElement>("#lesson-next")!;
  const status = root.querySelector<HTMLElement>("#lesson-status")!;
  const mode = root.querySelector<HTMLElement>("#teaching-mode")!;

  fetch("/api/lessons")
    .then((r) => r.json() as Promise<LessonInfo[]>)
    .then((list) => {
      for (const l of list) {
        const o = document.createElement("option");
        o.value = l.name;
        o.textContent = `${l.title} (${l.article.split(":")[0]})`;
        o.title = l.about;
        pick.append(o);
      }
    })
    .catch(() => { status.textContent = "lessons unavailable"; });

  start.addEventListener("click", async () => {
    start.disabled = true;
    status.textContent = "preparing the cluster…";
    const a = await post("/api/lesson", { name: pick.value, teacher: teacher.checked });
    status.textContent = a.message;
    status.dataset.ok = String(a.ok);
    if (!a.ok) start.disabled = false;
  });
  next.addEventListener("click", async () => {
    next.disabled = true;
    await post("/api/lesson/next");
  });

  // Where the lesson is: running, waiting for the teacher, or done with its verdict.
  const poll = async () => {
    const on = (window as unknown as { lab?: { last?: { cluster?: { teaching?: string } } } }).lab?.last?.cluster?.teaching;
    mode.hidden = !on;
    mode.textContent = on ? `teaching mode: ${BROKEN[on] ?? on}` : "";
    try {
      const s = (await (await fetch("/api/lesson")).json()) as LessonStatus;
      root.dataset.running = String(s.running);
      root.dataset.waiting = String(s.waiting);
      next.disabled = !(s.running && s.waiting);
      if (s.name && !s.running) {
        start.disabled = false;
        if (s.summary) {
          root.dataset.passed = String(s.summary.passed);
          status.textContent = `${s.summary.passed ? "lesson shown: mistake red, fix green" : "the lesson did not show what it should"} (${s.name})`;
        }
      } else if (s.running) {
        delete root.dataset.passed;
        status.textContent = s.waiting ? `${s.name}: press "Next step" when the class is ready` : `${s.name} runs…`;
      }
    } catch {
      // The lab went away; the connection indicator says so.
    }
    setTimeout(poll, 500);
  };
  poll();
}
