// My devices: every device I signed in from; where each one running in this app is connected
// (online, node, last seen); revoke one, or open another device window.

import { useEffect, useState } from "preact/hooks";
import type { DeviceView } from "../../ipc/types";
import { listTime } from "../../model/format";
import { Dialog, ErrorText } from "../common";
import type { DialogProps } from ".";
import { useAction } from "./useAction";

/** How often the list is asked again while the dialog is open (devices move between nodes). */
const REFRESH_MS = 2000;

/** "online · n2", "offline · last seen 10:42 on n1", or why nothing is known. */
export function linkLine(d: DeviceView, now: number): { text: string; tone: "ok" | "muted" } {
  if (!d.link) return { text: d.state === "revoked" ? "" : "not open in this app", tone: "muted" };
  if (d.link.online) return { text: `online · ${d.link.node ?? "?"}`, tone: "ok" };
  const seen = d.link.last_seen !== null ? `last seen ${listTime(d.link.last_seen, now)}` : "not connected yet";
  return { text: `offline · ${seen}${d.link.node ? ` on ${d.link.node}` : ""}`, tone: "muted" };
}

export function Devices({ chat, onClose }: DialogProps) {
  const [devices, setDevices] = useState<DeviceView[] | null>(null);
  const { busy, error, run } = useAction();
  const load = () => chat.devices().then(setDevices, chat.fail);
  useEffect(() => {
    void load();
    const timer = window.setInterval(() => void chat.devices().then(setDevices, () => undefined), REFRESH_MS);
    return () => window.clearInterval(timer);
  }, []);
  const now = Date.now();
  return (
    <Dialog title="My devices" onClose={onClose} wide testid="devices-dialog">
      <p class="muted small">Every device you signed in from; for those open in this app, the node each is on. Revoking one signs it out everywhere at once.</p>
      <ul class="list">
        {devices === null && <li class="muted">Loading…</li>}
        {devices?.map((d) => {
          const link = linkLine(d, now);
          return (
            <li key={d.id} class={d.state} data-testid="device" data-name={d.name} data-online={d.link ? String(d.link.online) : ""} data-node={d.link?.node ?? ""}>
              <span class="grow">
                <strong>{d.name}</strong>
                {d.current && <span class="pill ok">this device</span>}
                {d.state === "revoked" && <span class="pill bad">revoked</span>}
                {link.text && (
                  <span class={`pill ${link.tone === "ok" ? "ok" : ""}`} data-testid="device-link">
                    {link.text}
                  </span>
                )}
                <span class="muted small block">
                  last sign-in {listTime(d.last_login, now)} · id {d.id.slice(0, 8)}
                  {d.window ? ` · window ${d.window}` : ""}
                </span>
              </span>
              {!d.current && d.state === "active" && (
                <button
                  class="danger"
                  disabled={busy}
                  onClick={() =>
                    void run(async () => {
                      await chat.revokeDevice(d.id, d.name);
                      await load();
                    })
                  }
                >
                  Revoke
                </button>
              )}
            </li>
          );
        })}
      </ul>
      <ErrorText error={error} />
      <div class="row end">
        <button class="secondary" onClick={() => void chat.openDeviceWindow().then(onClose)} data-testid="devices-open-window">
          Open another device window
        </button>
      </div>
    </Dialog>
  );
}
