/**
 * Symbol.dispose for runtimes that lack it (Node < 20.4, and VM contexts such
 * as jest's). Node's own polyfill uses the same registered symbols, so `using`
 * works with Node's objects and ours alike.
 */
const S = Symbol as unknown as { dispose?: symbol; asyncDispose?: symbol };
if (typeof S.dispose !== "symbol") {
  Object.defineProperty(Symbol, "dispose", { value: Symbol.for("nodejs.dispose") });
}
if (typeof S.asyncDispose !== "symbol") {
  Object.defineProperty(Symbol, "asyncDispose", { value: Symbol.for("nodejs.asyncDispose") });
}
export {};
