// Builds dist/ once before the suite, as `npm run build:ts` does: tests that
// run child processes or the packaged copy require the compiled package.
const { execFileSync } = require("child_process");
const path = require("path");

module.exports = async () => {
  const root = path.resolve(__dirname, "..");
  execFileSync(process.execPath, [require.resolve("typescript/bin/tsc"), "-p", "tsconfig.build.json"], {
    cwd: root,
    stdio: "inherit",
  });
  execFileSync(process.execPath, [path.join(root, "scripts", "esm-entry.js")], { cwd: root, stdio: "inherit" });
  process.env.MOE_EP_DIST_BUILT = "1";
};
