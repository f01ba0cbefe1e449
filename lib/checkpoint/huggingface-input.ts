/**
 * The tensors of a Hugging Face checkpoint that importHuggingFace reads: a
 * safetensors file, a list of them, a directory (the files its
 * model.safetensors.index.json names for the block, or every *.safetensors
 * file), or tensors by name. Files are opened for their headers; each tensor
 * is read when asked for, by positioned reads.
 */
import * as fs from "fs";
import * as path from "path";
import { MoEError, invalid } from "../errors";
import { Tensor, type DType } from "../tensor";
import { tensorBytes } from "./bytes";
import { SafetensorsFile, type SafetensorsReadOptions } from "./safetensors";

/** Where Hugging Face tensors come from: a safetensors file, a directory of them, or tensors by name. */
export type HuggingFaceSource = string | readonly string[] | Map<string, Tensor> | Record<string, Tensor>;

/** One Hugging Face tensor of the input. */
export interface HFTensor {
  shape: readonly number[];
  dtype: DType;
  read(into: Uint8Array): void;
}

/** The input's tensors under the block, opened by name; closes what it opened. */
export class Input {
  readonly names = new Set<string>();
  readonly skipped: Array<{ name: string; dtype: string; file: string }> = [];
  private readonly byName = new Map<string, HFTensor>();
  private readonly open: SafetensorsFile[] = [];

  constructor(source: HuggingFaceSource, block: string, dtypes: SafetensorsReadOptions["dtypes"]) {
    if (typeof source === "string" || Array.isArray(source)) {
      try {
        for (const file of filesOf(source as string | string[], block)) this.addFile(file, block, dtypes);
      } catch (e) {
        this.close();
        throw e;
      }
      return;
    }
    let entries: Array<[string, unknown]>;
    if (source instanceof Map) entries = [...source];
    else if (source !== null && typeof source === "object") entries = Object.entries(source);
    else throw invalid("a safetensors file, a directory, or a Map of name -> Tensor", "source", source);
    for (const [name, t] of entries) {
      if (typeof name !== "string") throw invalid("string names", "source", name);
      if (!(t instanceof Tensor) || t.disposed) throw invalid("a live Tensor", `the source's ${name}`, t);
      if (!name.startsWith(block)) continue;
      this.names.add(name);
      this.byName.set(name, { shape: t.shape, dtype: t.dtype, read: (into) => into.set(tensorBytes(t)) });
    }
  }

  private addFile(file: string, block: string, dtypes: SafetensorsReadOptions["dtypes"]): void {
    const f = SafetensorsFile.open(file, { dtypes });
    this.open.push(f);
    for (const [name, info] of f.tensors) {
      if (!name.startsWith(block)) continue;
      this.names.add(name);
      this.byName.set(name, { shape: info.shape, dtype: info.dtype, read: (into) => void f.read(name, into) });
    }
    for (const s of f.skipped) if (s.name.startsWith(block)) this.skipped.push({ name: s.name, dtype: s.dtype, file });
  }

  get(name: string): HFTensor | undefined {
    return this.byName.get(name);
  }

  close(): void {
    for (const f of this.open) f.close();
  }
}

/** The safetensors files to read: the file itself, the files a directory's index names for the block, or all. */
function filesOf(source: string | string[], block: string): string[] {
  if (Array.isArray(source)) {
    source.forEach((f, i) => {
      if (typeof f !== "string" || f === "") throw invalid("a file path", `source[${i}]`, f);
    });
    return source;
  }
  if (source === "") throw invalid("a file or directory path", "source", source);
  let st: fs.Stats;
  try {
    st = fs.statSync(source);
  } catch (e) {
    throw new MoEError(`Expected safetensors files at ${source} but it does not exist`, "ERR_MOE_VALUE", { cause: e });
  }
  if (!st.isDirectory()) return [source];
  const indexFile = path.join(source, "model.safetensors.index.json");
  if (fs.existsSync(indexFile)) {
    let map: Record<string, string>;
    try {
      map = JSON.parse(fs.readFileSync(indexFile, "utf8")).weight_map;
    } catch (e) {
      throw new MoEError(`Expected a JSON index at ${indexFile}`, "ERR_MOE_VALUE", { cause: e });
    }
    if (map === null || typeof map !== "object")
      throw new MoEError(`Expected a weight_map in ${indexFile}`, "ERR_MOE_VALUE");
    const files = new Set<string>();
    for (const [name, file] of Object.entries(map)) {
      if (!name.startsWith(block)) continue;
      if (typeof file !== "string" || path.basename(file) !== file)
        throw new MoEError(
          `Expected a file name in ${indexFile} for ${name} but received ${String(file)}`,
          "ERR_MOE_VALUE",
        );
      files.add(file);
    }
    return [...files].sort().map((f) => path.join(source, f));
  }
  const files = fs
    .readdirSync(source)
    .filter((f) => f.endsWith(".safetensors"))
    .sort();
  if (files.length === 0)
    throw new MoEError(`Expected safetensors files in the directory ${source} but it has none`, "ERR_MOE_VALUE");
  return files.map((f) => path.join(source, f));
}
