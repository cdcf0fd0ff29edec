// My devices: every device I signed in from; revoke one, or open another device window.

import { useEffect, useState } from "preact/hooks";
import type { DeviceInfo } from "../../ipc/types";
import { listTime } from "../../model/format";
import { Dialog, ErrorText } from "../common";
import type { DialogProps } from ".";
import { useAction } from "./useAction";

export function Devices({ chat, onClose }: DialogProps) {
  const [devices, setDevices] = useState<DeviceInfo[] | null>(null);
  const { busy, error, run } = useAction();
  const load = () => chat.devices().then(setDevices, chat.fail);
  useEffect(() => void load(), []);
  const now = Date.now();
  return (
    <Dialog title="My devices" onClose={onClose} wide testid="devices-dialog">
      <p class="muted small">Every device you signed in from. Revoking one signs it out everywhere at once.</p>
      <ul class="list">
        {devices === null && <li class="muted">Loading…</li>}
        {devices?.map((d) => (
          <li key={d.id} class={d.state} data-testid="device">
            <span class="grow">
              <strong>{d.name}</strong>
              {d.current && <span class="pill ok">this device</span>}
              {d.state === "revoked" && <span class="pill bad">revoked</span>}
              <span class="muted small block">
                last sign-in {listTime(d.last_login, now)} · id {d.id.slice(0, 8)}
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
        ))}
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
