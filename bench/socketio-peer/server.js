// One node of the Socket.IO cluster that `bench --peer` measures this project against: the
// usual way to scale Socket.IO out, every node on one Redis through the Redis adapter, nothing
// persisted. A user's sockets join a room named after the user; a direct message is an event
// to the recipient's room, acknowledged to the sender once the node has handed it on.
//
// Environment: PORT (0: any free port), HOST (default 127.0.0.1), REDIS_URL (default
// redis://127.0.0.1:6379), CHANNEL (the adapter's channel prefix, one per run so that runs
// never hear each other). Prints `listening <port>` once it accepts connections.

"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

async function main() {
  const host = process.env.HOST || "127.0.0.1";
  const port = Number(process.env.PORT || 0);
  const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";
  const channel = process.env.CHANNEL || "socket.io";

  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) {
    c.on("error", (e) => console.error(`redis: ${e.message}`));
  }
  await Promise.all([pub.connect(), sub.connect()]);

  const server = http.createServer();
  const io = new Server(server, {
    transports: ["websocket"],
    serveClient: false,
    adapter: createAdapter(pub, sub, { key: channel }),
  });

  io.use((socket, next) => {
    const user = socket.handshake.auth && socket.handshake.auth.user;
    if (typeof user !== "string" || user.length === 0) {
      next(new Error("auth.user is required"));
      return;
    }
    socket.data.user = user;
    next();
  });

  io.on("connection", (socket) => {
    socket.join(socket.data.user);
    socket.on("dm", (msg, ack) => {
      if (!msg || typeof msg.to !== "string" || typeof msg.text !== "string") {
        if (typeof ack === "function") ack({ ok: false });
        return;
      }
      io.to(msg.to).emit("dm", { from: socket.data.user, text: msg.text });
      if (typeof ack === "function") ack({ ok: true });
    });
  });

  server.listen(port, host, () => {
    console.log(`listening ${server.address().port}`);
  });

  const stop = () => {
    io.close(() => {
      Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    });
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
