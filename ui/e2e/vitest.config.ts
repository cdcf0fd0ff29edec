// The end-to-end run: the real desktop app under Xvfb, one scenario at a time. With E2E_DEB set
// (scripts/desktop-deb-test.sh), only the installed package's scenario runs.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: process.env.E2E_DEB ? ["e2e/**/*.deb.ts"] : ["e2e/**/*.e2e.ts"],
    environment: "node",
    testTimeout: 240_000,
    hookTimeout: 120_000,
    fileParallelism: false,
    sequence: { concurrent: false },
    reporters: ["verbose"],
  },
});
