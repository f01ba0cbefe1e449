/**
 * Where a checkpoint's files live, so that a save replaces a checkpoint whole
 * or not at all. Each save writes a fresh version directory `dir/v-NNNNNN/`
 * (the index and the shards) and then switches the symlink `dir/latest` to it
 * with one rename(2); a kill at any moment leaves `latest` naming either the
 * old complete version or the new complete one. What a killed save left (a
 * half-written version, a pointer not yet renamed, `.tmp-` files) is removed
 * by the next save. A directory without `latest` is read as the files
 * themselves (a flat checkpoint, as other tools write them).
 */
import * as fs from "fs";
import * as path from "path";
import { MoEError } from "../errors";

export const LATEST = "latest";
const VERSION = /^v-(\d{6,})$/;
/** Names a save owns in dir: versions, pointer temporaries, and the flat layout's files. */
const OWNED = [
  VERSION,
  /^latest\.tmp-/,
  /^(model|optimizer)\.safetensors\.index\.json(\.tmp-.*)?$/,
  /^(model|optimizer)-ep\d+-of-\d+\.safetensors(\.tmp-.*)?$/,
];

function code(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException)?.code;
}

/** The version `dir/latest` points to, or undefined when dir has no pointer. */
export function currentVersion(dir: string): string | undefined {
  const link = path.join(dir, LATEST);
  let st: fs.Stats;
  try {
    st = fs.lstatSync(link);
  } catch (e) {
    if (code(e) === "ENOENT" || code(e) === "ENOTDIR") return undefined;
    throw new MoEError(`Expected to read the checkpoint pointer ${link} but ${(e as Error).message}`, "ERR_MOE_VALUE");
  }
  const target = st.isSymbolicLink() ? fs.readlinkSync(link) : "";
  if (!VERSION.test(target))
    throw new MoEError(
      `Expected ${link} to be a symlink to a version directory (v-NNNNNN) but received ${target || "a non-link"}`,
      "ERR_MOE_VALUE",
    );
  return target;
}

/** The directory holding the index and shards of the checkpoint at dir (after `latest`). */
export function checkpointFilesDir(dir: string): string {
  const version = currentVersion(dir);
  if (version === undefined) return dir;
  const root = path.join(dir, version);
  let st: fs.Stats;
  try {
    st = fs.lstatSync(root);
  } catch {
    throw new MoEError(
      `Expected the version directory ${root} that ${LATEST} names but it is missing`,
      "ERR_MOE_VALUE",
    );
  }
  if (!st.isDirectory())
    throw new MoEError(`Expected ${root} to be a directory (not a link) but it is not`, "ERR_MOE_VALUE");
  return root;
}

/** The version the next save writes: one past the current one. */
export function nextVersion(dir: string): string {
  const cur = currentVersion(dir);
  const n = cur === undefined ? 0 : Number(VERSION.exec(cur)![1]);
  return `v-${String(n + 1).padStart(6, "0")}`;
}

/**
 * Removes what earlier saves owned in dir except `latest` and keep (no user files are touched);
 * the flat layout's files only when flat is set, i.e. once `latest` supersedes them.
 */
export function removeLitter(dir: string, keep: string, flat: boolean): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    if (code(e) === "ENOENT") return;
    throw e;
  }
  for (const n of names) {
    if (n === LATEST || n === keep || !(flat ? OWNED : OWNED.slice(0, 2)).some((re) => re.test(n))) continue;
    fs.rmSync(path.join(dir, n), { recursive: true, force: true });
  }
}

export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Points `dir/latest` at version with one rename, durably. */
export function switchLatest(dir: string, version: string): void {
  fsyncDir(path.join(dir, version));
  const tmp = path.join(dir, `${LATEST}.tmp-${process.pid}-${Date.now()}`);
  fs.symlinkSync(version, tmp);
  fs.renameSync(tmp, path.join(dir, LATEST));
  fsyncDir(dir);
}

/**
 * The path of a file the index names, checked to be a regular file inside root: present, and
 * not a link that leads out of the checkpoint.
 */
export function checkedFile(root: string, file: string, what: string): string {
  if (typeof file !== "string" || file === "" || path.basename(file) !== file || file === "." || file === "..")
    throw new MoEError(`Expected a file name in the index for ${what} but received ${String(file)}`, "ERR_MOE_VALUE");
  const p = path.join(root, file);
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch (e) {
    throw new MoEError(
      `Expected the file ${file} in the checkpoint at ${root} (${what}) but it is missing (${code(e) ?? "unreadable"})`,
      "ERR_MOE_VALUE",
    );
  }
  if (st.isSymbolicLink()) {
    let real: string;
    try {
      real = fs.realpathSync(p);
    } catch {
      throw new MoEError(`Expected ${file} in ${root} to lead to a file but the link is broken`, "ERR_MOE_VALUE");
    }
    const base = fs.realpathSync(root);
    if (path.dirname(real) !== base && !real.startsWith(base + path.sep))
      throw new MoEError(`Expected ${file} inside the checkpoint at ${root} but it links to ${real}`, "ERR_MOE_VALUE");
    st = fs.statSync(real);
  }
  if (!st.isFile()) throw new MoEError(`Expected ${file} in ${root} to be a regular file`, "ERR_MOE_VALUE");
  return p;
}
