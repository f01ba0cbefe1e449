/**
 * The option tables of the command line: each subcommand lists its flags in
 * one table (name, value, help line, and how the value is read), and
 * parseOptions reads argv against it with node:util's parseArgs. Every flag
 * is checked: an unknown one, a missing value or a value that does not parse
 * is a UsageError naming the flag, which the CLI prints with a pointer to
 * --help and exit code 2. `-h` / `--help` belongs to every table.
 */
import { parseArgs } from "util";
import { MoEError } from "./errors";

/** A bad argument on the command line (ERR_MOE_VALUE); the CLI exits with code 2. */
export class UsageError extends MoEError {
  constructor(message: string) {
    super(message, "ERR_MOE_VALUE");
    this.name = "UsageError";
  }
}

/** How a flag's value is read: text, an integer in [min, max], a number, one of a list, or none (a switch). */
export type FlagKind =
  | { type: "string" }
  | { type: "int"; min: number; max?: number }
  | { type: "number"; min?: number; max?: number }
  | { type: "choice"; choices: readonly string[] }
  | { type: "boolean" };

export interface Flag {
  /** The long name, without the dashes: `--nproc-per-node` is "nproc-per-node". */
  name: string;
  /** A one-letter form (`-n`). */
  short?: string;
  /** Other long names meaning the same. */
  aliases?: readonly string[];
  /** The key the value is stored under (default: name). */
  key?: string;
  kind: FlagKind;
  /** The value's placeholder in the usage ("N", "ADDR"). */
  value?: string;
  /** One line for --help. */
  help: string;
}

export interface Parsed {
  /** Values by key, of the flags given. */
  values: Record<string, string | number | boolean>;
  /** How each given flag was spelled (for messages and for passing on). */
  spelled: Record<string, string>;
  /** The arguments after the flags: everything from the first positional (or after `--`) on. */
  rest: string[];
  help: boolean;
  /** The arguments as given. */
  args: string[];
}

const HELP: Flag = { name: "help", short: "h", kind: { type: "boolean" }, help: "print this help and exit" };

function dashed(name: string): string {
  return name.length === 1 ? `-${name}` : `--${name}`;
}

function convert(flag: Flag, spelled: string, text: string): string | number | boolean {
  const k = flag.kind;
  switch (k.type) {
    case "string":
    case "boolean":
      return text;
    case "choice":
      if (!k.choices.includes(text))
        throw new UsageError(`expected one of ${k.choices.join(", ")} for ${spelled} but received "${text}"`);
      return text;
    case "int": {
      const max = k.max ?? Number.MAX_SAFE_INTEGER;
      const v = /^\d+$/.test(text) ? Number(text) : NaN;
      if (!Number.isSafeInteger(v) || v < k.min || v > max)
        throw new UsageError(`expected an integer in [${k.min}, ${max}] for ${spelled} but received "${text}"`);
      return v;
    }
    case "number": {
      const v = text.trim() === "" ? NaN : Number(text);
      const lo = k.min ?? -Infinity;
      const hi = k.max ?? Infinity;
      if (!Number.isFinite(v) || v < lo || v > hi)
        throw new UsageError(`expected a number in [${lo}, ${hi}] for ${spelled} but received "${text}"`);
      return v;
    }
  }
}

/**
 * Reads the flags of `args` against the table. With `rest: true` the flags
 * end at the first argument that is not one (or at `--`), and that argument
 * and all after it are returned untouched; otherwise a positional argument
 * is an error.
 */
export function parseOptions(table: readonly Flag[], args: string[], options: { rest?: boolean } = {}): Parsed {
  const flags = [...table, HELP];
  const byName = new Map<string, Flag>();
  const parseOpts: Record<string, { type: "string" | "boolean"; short?: string }> = {};
  for (const f of flags) {
    for (const name of [f.name, ...(f.aliases ?? [])]) {
      byName.set(name, f);
      parseOpts[name] = { type: f.kind.type === "boolean" ? "boolean" : "string" };
    }
    if (f.short) {
      byName.set(f.short, f);
      parseOpts[f.name].short = f.short;
    }
  }
  // With rest, the flags end where the first positional starts: find it
  // without reading past it, so a script's own arguments are never looked at.
  let end = args.length;
  let restStart = args.length;
  for (let i = 0; options.rest && i < args.length; ++i) {
    const a = args[i];
    if (a === "--" || !a.startsWith("-") || a === "-") {
      end = i;
      restStart = a === "--" ? i + 1 : i;
      break;
    }
    const f = byName.get(a.startsWith("--") ? a.slice(2).split("=")[0] : a.slice(1));
    if (f && f.kind.type !== "boolean" && !a.includes("=")) ++i;
  }
  const head = args.slice(0, end);
  const rest = args.slice(restStart);

  // First pass, lenient: find --help, unknown flags and missing values, and name them as given.
  const { tokens } = parseArgs({ args: head, options: parseOpts, strict: false, allowPositionals: true, tokens: true });
  const optionTokens = (tokens ?? []).filter((t) => t.kind === "option");
  if (optionTokens.some((t) => t.name === "help")) return { values: {}, spelled: {}, rest, help: true, args };
  for (const t of optionTokens) {
    const f = byName.get(t.name);
    if (!f || !(t.name in parseOpts)) throw new UsageError(`unknown option ${t.rawName}`);
    if (f.kind.type !== "boolean" && t.value === undefined) throw new UsageError(`${t.rawName} needs a value`);
    if (f.kind.type === "boolean" && t.inlineValue) throw new UsageError(`${t.rawName} takes no value`);
  }
  const positional = (tokens ?? []).find((t) => t.kind === "positional");
  if (positional) throw new UsageError(`unexpected argument "${positional.value}"`);
  // Second pass, strict, as parseArgs checks: it must agree.
  try {
    parseArgs({ args: head, options: parseOpts, strict: true, allowPositionals: false });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const values: Parsed["values"] = {};
  const spelled: Parsed["spelled"] = {};
  for (const t of optionTokens) {
    const f = byName.get(t.name)!;
    const key = f.key ?? f.name;
    values[key] = f.kind.type === "boolean" ? true : convert(f, t.rawName, t.value as string);
    spelled[key] = t.rawName;
  }
  return { values, spelled, rest, help: false, args };
}

/** The lines --help prints for a table (the help flag included). */
export function describeFlags(table: readonly Flag[]): string {
  const rows = [...table, HELP].map((f) => {
    const names = [f.short && `-${f.short}`, dashed(f.name), ...(f.aliases ?? []).map(dashed)].filter(Boolean);
    return [names.join(", ") + (f.value ? ` ${f.value}` : ""), f.help];
  });
  const width = Math.max(...rows.map((r) => r[0].length)) + 2;
  // A help text's further lines line up under its first.
  const indent = "\n" + " ".repeat(width + 2);
  return rows.map(([l, r]) => `  ${l.padEnd(width)}${r.split("\n").join(indent)}`).join("\n");
}

/** A subcommand: its usage line(s), its flag table, and what it does with the values. */
export interface Command {
  /** "moe-ep bench ops [options]" and any lines that follow. */
  usage: string;
  flags: readonly Flag[];
  /** Positional arguments after the flags are passed on (launch's script) instead of refused. */
  rest?: boolean;
  run(parsed: Parsed): Promise<number>;
}

/** The --help text of a command. */
export function commandHelp(cmd: Command): string {
  return `usage: ${cmd.usage}\n\noptions:\n${describeFlags(cmd.flags)}\n`;
}

/** Parses args against the command's table and runs it; --help prints the usage to stdout and returns 0. */
export async function runCommand(cmd: Command, args: string[]): Promise<number> {
  const parsed = parseOptions(cmd.flags, args, { rest: cmd.rest });
  if (parsed.help) {
    process.stdout.write(commandHelp(cmd));
    return 0;
  }
  return cmd.run(parsed);
}
