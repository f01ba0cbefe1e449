/**
 * The type-level checks of test/types/ hold: the file compiles as it is (every
 * `@ts-expect-error` line is an error), is part of what `npm run typecheck`
 * compiles, and an expectation that no longer fails is itself an error.
 */
import * as path from "path";
import * as ts from "typescript";

const root = path.resolve(__dirname, "..");
const file = path.join(root, "test", "types", "moe-layer-options.ts");

function compilerOptions(): { options: ts.CompilerOptions; fileNames: string[] } {
  const config = ts.readConfigFile(path.join(root, "tsconfig.json"), ts.sys.readFile);
  const parsed = ts.parseJsonConfigFileContent(config.config, ts.sys, root);
  return { options: { ...parsed.options, noEmit: true }, fileNames: parsed.fileNames };
}

/** The diagnostics of the file, compiled with the project's options, its text changed by `edit`. */
function diagnostics(edit: (text: string) => string, old?: ts.Program): { program: ts.Program; codes: number[] } {
  const { options } = compilerOptions();
  const host = ts.createCompilerHost(options);
  const read = host.getSourceFile.bind(host);
  host.getSourceFile = (name, language, onError, create) =>
    path.resolve(name) === file
      ? ts.createSourceFile(name, edit(ts.sys.readFile(file)!), language)
      : read(name, language, onError, create);
  const program = ts.createProgram([file], options, host, old);
  const codes = ts.getPreEmitDiagnostics(program, program.getSourceFile(file)).map((d) => d.code);
  return { program, codes };
}

test("test/types is compiled by the typecheck, its expectations hold, and a wrong one fails", () => {
  expect(compilerOptions().fileNames.map((f) => path.resolve(f))).toContain(file);
  const text = ts.sys.readFile(file)!;
  expect(text.match(/@ts-expect-error/g)?.length).toBeGreaterThanOrEqual(5);
  const asIs = diagnostics((t) => t);
  expect(asIs.codes).toEqual([]);
  // "relu" is an ActivationKind: its @ts-expect-error is now unused (TS2578).
  const wrong = diagnostics((t) => t.replace('activation: "reluu"', 'activation: "relu"'), asIs.program);
  expect(wrong.codes).toEqual([2578]);
}, 120000);
