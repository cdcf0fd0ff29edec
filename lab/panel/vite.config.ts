// The panel is served by `lab up` from the built `dist/` (embedded in the binary). `npm run dev`
// serves it with hot reload and forwards the API to a running `lab up` (LAB_URL, default the
// lab's default address).
import { defineConfig } from "vite";

const lab = process.env.LAB_URL ?? "http://127.0.0.1:7878";

export default defineConfig({
  base: "/",
  build: { outDir: "dist", emptyOutDir: true, target: "es2022", chunkSizeWarningLimit: 400 },
  server: { proxy: { "/api": { target: lab, ws: true } } },
});
