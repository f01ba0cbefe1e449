/**
 * Reading compiled CUDA code without a GPU and without cuobjdump: the CUDA ELF
 * images (cubins) that nvcc embeds uncompressed in object files and archives,
 * their target architecture (from the ptxas command line in .note.nv.tkinfo)
 * and, per function, the register count and local-memory stack frame (where
 * register spills go) from .nv.info. The same reader is inlined in
 * test/cuda-build.test.ts, which predates this module.
 */
import * as fs from "fs";
import * as path from "path";

export function findTool(name: string): string | undefined {
  const dirs = [
    ...(process.env.PATH ?? "").split(path.delimiter),
    ...(process.env.CUDA_HOME ? [path.join(process.env.CUDA_HOME, "bin")] : []),
    "/usr/local/cuda/bin",
  ];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    if (fs.existsSync(candidate)) return candidate;
  }
  return undefined;
}

export interface DeviceFunction {
  registers?: number;
  frameBytes?: number;
}

export interface Cubin {
  arch: string | undefined; // "sm_90a"
  functions: Map<string, DeviceFunction>;
}

const EM_CUDA = 190;
const SHT_SYMTAB = 2;
const SHT_NOTE = 7;
const EIFMT_SVAL = 4;
const EIATTR_FRAME_SIZE = 0x11;
const EIATTR_REGCOUNT = 0x2f;

/** One CUDA ELF image starting at `at` inside `buf`, or undefined when it is not one. */
export function readCubin(buf: Buffer, at: number): Cubin | undefined {
  if (buf[at + 4] !== 2 || buf[at + 5] !== 1 || buf.readUInt16LE(at + 0x12) !== EM_CUDA) return undefined;
  const shoff = Number(buf.readBigUInt64LE(at + 0x28));
  const shentsize = buf.readUInt16LE(at + 0x3a);
  const shnum = buf.readUInt16LE(at + 0x3c);
  const shstrndx = buf.readUInt16LE(at + 0x3e);
  const cstr = (o: number) => buf.toString("latin1", o, buf.indexOf(0, o));
  const sections = Array.from({ length: shnum }, (_, i) => {
    const h = at + shoff + i * shentsize;
    return {
      nameOffset: buf.readUInt32LE(h),
      type: buf.readUInt32LE(h + 4),
      offset: at + Number(buf.readBigUInt64LE(h + 0x18)),
      size: Number(buf.readBigUInt64LE(h + 0x20)),
      link: buf.readUInt32LE(h + 0x28),
      name: "",
    };
  });
  for (const s of sections) s.name = cstr(sections[shstrndx].offset + s.nameOffset);

  let arch: string | undefined;
  for (const s of sections) {
    if (s.type !== SHT_NOTE) continue;
    const m = /-arch (sm_\w+)/.exec(buf.toString("latin1", s.offset, s.offset + s.size));
    if (m) arch = m[1];
  }

  const functions = new Map<string, DeviceFunction>();
  const symtab = sections.find((s) => s.type === SHT_SYMTAB);
  const info = sections.find((s) => s.name === ".nv.info");
  if (symtab && info) {
    const strtab = sections[symtab.link];
    const symbol = (index: number) => cstr(strtab.offset + buf.readUInt32LE(symtab.offset + index * 24));
    // Entries: u8 format, u8 attribute, then a u16 value, or for EIFMT_SVAL a
    // u16 size and that many bytes (here: u32 symbol index, u32 value).
    for (let p = info.offset; p < info.offset + info.size;) {
      const format = buf[p];
      const attribute = buf[p + 1];
      if (format !== EIFMT_SVAL) {
        p += 4;
        continue;
      }
      const size = buf.readUInt16LE(p + 2);
      if ((attribute === EIATTR_FRAME_SIZE || attribute === EIATTR_REGCOUNT) && size >= 8) {
        const name = symbol(buf.readUInt32LE(p + 4));
        const value = buf.readUInt32LE(p + 8);
        const f = functions.get(name) ?? {};
        if (attribute === EIATTR_FRAME_SIZE) f.frameBytes = value;
        else f.registers = value;
        functions.set(name, f);
      }
      p += 4 + size;
    }
  }
  return { arch, functions };
}

/** Every uncompressed CUDA ELF image in a file (object files embed them in their fatbinary). */
export function embeddedCubins(file: string): Cubin[] {
  const buf = fs.readFileSync(file);
  const out: Cubin[] = [];
  for (let at = buf.indexOf("\x7fELF", 0, "latin1"); at >= 0; at = buf.indexOf("\x7fELF", at + 4, "latin1")) {
    try {
      const c = readCubin(buf, at);
      if (c) out.push(c);
    } catch {
      // bytes that merely look like an ELF header
    }
  }
  return out;
}

export interface PtxasFunction {
  name: string; // mangled
  arch: string; // "sm_90a"
  registers: number;
  stackBytes: number;
  spillStores: number;
  spillLoads: number;
  sharedBytes: number; // static shared memory
}

/**
 * The per-function report of `nvcc --resource-usage` / `-Xptxas -v`:
 *   ptxas info : Compiling entry function 'NAME' for 'sm_80'
 *   ptxas info : Function properties for NAME
 *       0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
 *   ptxas info : Used 128 registers, used 1 barriers, 64 bytes smem, ...
 */
export function parsePtxasReport(text: string): PtxasFunction[] {
  const out: PtxasFunction[] = [];
  let current: PtxasFunction | undefined;
  for (const line of text.split("\n")) {
    const entry = /Compiling entry function '([^']+)' for '(sm_\w+)'/.exec(line);
    if (entry) {
      current = {
        name: entry[1],
        arch: entry[2],
        registers: -1,
        stackBytes: -1,
        spillStores: -1,
        spillLoads: -1,
        sharedBytes: 0,
      };
      out.push(current);
      continue;
    }
    if (!current) continue;
    const frame = /(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/.exec(line);
    if (frame) {
      current.stackBytes = Number(frame[1]);
      current.spillStores = Number(frame[2]);
      current.spillLoads = Number(frame[3]);
    }
    const used = /Used (\d+) registers/.exec(line);
    if (used) {
      current.registers = Number(used[1]);
      const smem = /(\d+) bytes smem/.exec(line);
      if (smem) current.sharedBytes = Number(smem[1]);
    }
  }
  return out;
}
