// The cluster's nodes as the controller sees them, which one this window is on; a local
// cluster's nodes can be killed (SIGKILL) and restarted here. Also where the server is changed.

import { useEffect, useState } from "preact/hooks";
import type { ClusterView } from "../../ipc/types";
import { processRuns, statusLine, waitingCount } from "../../model/view";
import { Dialog, ErrorText } from "../common";
import type { DialogProps } from ".";
import { useAction } from "./useAction";

export function Cluster({ state, chat, onClose }: DialogProps) {
  const [view, setView] = useState<ClusterView | null>(null);
  const [changing, setChanging] = useState(false);
  const { busy, error, run } = useAction();
  const load = () => chat.clusterStatus().then(setView, chat.fail);
  useEffect(() => {
    void load();
    const timer = window.setInterval(() => void load(), 1000);
    return () => window.clearInterval(timer);
  }, []);
  const line = statusLine(state.status, state.server, waitingCount(state));
  return (
    <Dialog title="Cluster" onClose={onClose} wide testid="cluster-dialog">
      <p class="muted small">
        {view ? (view.local ? `Local cluster started by this app · controller ${view.controller}` : `Controller ${view.controller}`) : "Asking the controller…"}
        <br />
        This window is {line.node ? `on node ${line.node}` : "not connected to a node"}.
      </p>
      <table class="nodes">
        <thead>
          <tr>
            <th>Node</th>
            <th>State</th>
            <th>Devices</th>
            {view?.local && <th>Process</th>}
            {view?.local && <th />}
          </tr>
        </thead>
        <tbody>
          {view?.nodes.map((n) => (
            <tr key={n.id} data-testid="node" data-node={n.id} data-state={n.state} class={line.node === n.id ? "mine" : ""}>
              <td>
                <strong>{n.id}</strong>
                {line.node === n.id && <span class="pill ok">this window</span>}
              </td>
              <td>
                <span class={`pill ${n.state === "live" ? "ok" : n.state === "draining" || n.state === "starting" ? "warn" : "bad"}`}>{n.state}</span>
              </td>
              <td>{n.connections}</td>
              {view.local && <td class="muted">{n.pid ? `pid ${n.pid}` : ""}{n.exit ? ` · ${n.exit}` : ""}</td>}
              {view.local && (
                <td class="right">
                  {processRuns(n.state) ? (
                    <button key="kill" class="danger small" disabled={busy} onClick={() => void run(() => chat.killNode(n.id).then(load))} data-testid="kill-node">
                      Kill
                    </button>
                  ) : (
                    <button key="restart" class="secondary small" disabled={busy} onClick={() => void run(() => chat.restartNode(n.id).then(load))} data-testid="restart-node">
                      Restart
                    </button>
                  )}
                </td>
              )}
            </tr>
          ))}
        </tbody>
      </table>
      {view?.local && <p class="muted small">Kill sends SIGKILL, as a crash would: devices on that node reconnect to another one and resync, with nothing lost or doubled.</p>}
      <ErrorText error={error} />
      <div class="row end">
        {changing && <span class="muted small grow">Every window is signed out; the app restarts and asks where to connect.</span>}
        {changing && (
          <button class="secondary" onClick={() => setChanging(false)}>
            Cancel
          </button>
        )}
        <button class="danger" disabled={busy} onClick={() => (changing ? void run(() => chat.forgetServer()) : setChanging(true))}>
          {changing ? "Sign out and change" : "Change server…"}
        </button>
      </div>
    </Dialog>
  );
}
