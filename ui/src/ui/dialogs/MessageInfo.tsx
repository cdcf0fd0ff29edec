// A message as a tester looks at it: who sent it from which device, the node that accepted it,
// its seq and id, when it was stored, and when each of my devices open in this app got it
// (and through which node). Asked again every second while open, so a device that catches up
// after a failover shows up.

import { useEffect, useState } from "preact/hooks";
import type { MessageInfo as Info } from "../../ipc/types";
import type { ChatState, Item } from "../../model/chat";
import type { ChatController } from "../../model/controller";
import { userName } from "../../model/view";
import { Dialog } from "../common";

const REFRESH_MS = 1000;

/** "14:05:09.123", to the millisecond: the order of arrivals is the point. */
export function preciseTime(ms: number): string {
  const d = new Date(ms);
  const pad = (n: number, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** "+12 ms" after the message was stored. */
export function after(at: number, stored: number): string {
  const ms = at - stored;
  return ms < 1000 ? `+${Math.max(0, ms)} ms` : `+${(ms / 1000).toFixed(1)} s`;
}

export function MessageInfo({ item, state, chat, onClose }: { item: Item; state: ChatState; chat: ChatController; onClose: () => void }) {
  const [info, setInfo] = useState<Info | null>(null);
  useEffect(() => {
    if (!item.id) return;
    const id = item.id;
    const load = () => void chat.messageInfo(id).then(setInfo, () => undefined);
    load();
    const timer = window.setInterval(load, REFRESH_MS);
    return () => window.clearInterval(timer);
  }, [item.id]);
  const e = info?.event ?? null;
  const mine = state.me !== null && item.sender === state.me.id;
  const senderDevice = e?.device ?? null;
  const ownDevice = senderDevice ? info?.receipts.find((r) => r.device === senderDevice) : undefined;
  const rows: [string, string, string][] = [
    ["Sender", userName(state, item.sender), "info-sender"],
    ["Sent from device", senderDevice ? (ownDevice ? `${ownDevice.device_name} (${senderDevice})` : senderDevice) : mine ? "—" : "not shown to others", "info-device"],
    ["Accepted by node", e?.origin ?? "—", "info-origin"],
    ["Seq", String(item.seq ?? "—"), "info-seq"],
    ["Id", item.id ?? "—", "info-id"],
    ["Stored at", preciseTime(item.at), "info-at"],
  ];
  return (
    <Dialog title="Message info" onClose={onClose} wide testid="message-info-dialog">
      <dl class="facts">
        {rows.map(([k, v, id]) => (
          <div key={id}>
            <dt>{k}</dt>
            <dd data-testid={id}>{v}</dd>
          </div>
        ))}
      </dl>
      <h3 class="small">My devices in this app</h3>
      <ul class="list">
        {info === null && <li class="muted">Loading…</li>}
        {info?.receipts.map((r) => (
          <li key={r.window} data-testid="receipt" data-device={r.device_name} data-node={r.node ?? ""} data-got={String(r.at !== null)}>
            <span class="grow">
              <strong>{r.device_name}</strong>
              <span class="muted small block">
                window {r.window} · id {r.device.slice(0, 8)}
              </span>
            </span>
            <span class="small">
              {r.at !== null ? `got it ${preciseTime(r.at)} (${after(r.at, item.at)}) via ${r.node ?? "?"}` : "not received live (history only, or not yet)"}
            </span>
          </li>
        ))}
      </ul>
    </Dialog>
  );
}
