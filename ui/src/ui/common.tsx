// Small shared pieces: avatars with presence dots, the modal dialog frame, buttons with a busy
// state, and the toast list.

import type { ComponentChildren } from "preact";
import { useEffect, useRef } from "preact/hooks";
import type { Toast } from "../model/controller";
import { hue, initials } from "../model/format";
import { CloseIcon } from "./icons";

export function Avatar({ name, size = 40, online, room }: { name: string; size?: number; online?: boolean | null; room?: boolean }) {
  const h = hue(name);
  return (
    <span class={`avatar${room ? " room" : ""}`} style={{ width: `${size}px`, height: `${size}px`, fontSize: `${Math.round(size * 0.38)}px`, "--h": h }}>
      {initials(name)}
      {online !== undefined && online !== null && (
        <span class={`presence ${online ? "on" : "off"}`} data-testid="presence" data-online={String(online)} title={online ? "Online" : "Offline"} />
      )}
    </span>
  );
}

export function Dialog({ title, onClose, children, wide, testid }: { title: string; onClose: () => void; children: ComponentChildren; wide?: boolean; testid?: string }) {
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (e.key === "Escape") onClose();
    };
    window.addEventListener("keydown", onKey);
    const first = ref.current?.querySelector<HTMLElement>("input, textarea, button:not(.icon)");
    first?.focus();
    return () => window.removeEventListener("keydown", onKey);
  }, []);
  return (
    <div class="overlay" onMouseDown={(e) => e.target === e.currentTarget && onClose()}>
      <div class={`dialog${wide ? " wide" : ""}`} role="dialog" aria-label={title} ref={ref} data-testid={testid}>
        <header>
          <h2>{title}</h2>
          <button class="icon" onClick={onClose} aria-label="Close" title="Close (Esc)">
            <CloseIcon />
          </button>
        </header>
        <div class="dialog-body">{children}</div>
      </div>
    </div>
  );
}

export function ErrorText({ error }: { error: string | null }) {
  if (!error) return null;
  return (
    <p class="error-text" role="alert" data-testid="error">
      {error}
    </p>
  );
}

export function Toasts({ toasts, onDismiss }: { toasts: Toast[]; onDismiss: (id: number) => void }) {
  return (
    <div class="toasts" aria-live="polite">
      {toasts.map((t) => (
        <div key={t.id} class={`toast ${t.tone}`} data-testid="toast">
          <span class="toast-text" onClick={() => onDismiss(t.id)}>
            {t.text}
          </span>
          {t.action && (
            <button
              class="toast-action"
              data-testid="toast-action"
              onClick={() => {
                onDismiss(t.id);
                t.action?.run();
              }}
            >
              {t.action.label}
            </button>
          )}
        </div>
      ))}
    </div>
  );
}
