// Writes dist/index.mjs, the ES module entry, and dist/index.d.mts, its types:
// the module re-exports the CommonJS build so `import` and `require` share one
// copy of the addon and its state; the types re-export the CommonJS ones,
// which TypeScript then resolves as ES module types (package.json's "import"
// condition) rather than CommonJS ones.
const fs = require("fs");
const path = require("path");
const dist = path.join(__dirname, "..", "dist");
const cjs = require(path.join(dist, "index.js"));
const names = Object.keys(cjs).filter((n) => n !== "default" && n !== "__esModule");
const body =
  `import cjs from "./index.js";\n` + `export const { ${names.join(", ")} } = cjs;\n` + `export default cjs;\n`;
fs.writeFileSync(path.join(dist, "index.mjs"), body);
const types = `import cjs from "./index.js";\n` + `export * from "./index.js";\n` + `export default cjs;\n`;
fs.writeFileSync(path.join(dist, "index.d.mts"), types);
