/**
 * All-to-all benchmark in the manner of nccl-tests' alltoall_perf: worldSize
 * ranks per host (through `moe-ep launch`, on this host or, given the
 * launcher's options for several hosts, on each) exchange equal splits of float32 data
 * with ProcessGroup.allToAllV over Gloo, for sizes from minBytes to maxBytes
 * per rank (doubling); each line gives the time, algbw = bytes / time, busbw
 * = algbw · (n − 1) / n, and #wrong, the elements that arrived wrong on any
 * rank (rank-encoded data, checked on every rank). The memcpy bandwidth of the
 * machine, measured in the same run, is printed beside them.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { MoEError, checkInteger, invalid } from "../errors";
import { launch } from "../launch";
import { packageRoot } from "../native";
import type { AlltoallRow, AlltoallWorkerReport } from "./alltoall-worker";

export type { AlltoallRow } from "./alltoall-worker";

export interface BenchAlltoallOptions {
  /** Ranks started on this host (default 2). */
  worldSize?: number;
  /**
   * Further `moe-ep launch` options, for a run over several hosts: --nnodes,
   * --node-rank, --master-addr, --master-port, --local-addr. Every host runs
   * the benchmark with the same options but --node-rank; host 0 prints the table.
   */
  launchArgs?: string[];
  /** Smallest size per rank in bytes (default 1 KiB). */
  minBytes?: number;
  /** Largest size per rank in bytes (default 64 MiB). */
  maxBytes?: number;
  /** Timeout of every collective, ms (default 120000). */
  timeoutMs?: number;
  /** Where the table's lines go (default console.log; null for none). */
  log?: ((line: string) => void) | null;
}

export interface BenchAlltoallResult {
  /** Ranks over all hosts. */
  worldSize: number;
  /** Ranks per host. */
  localWorldSize: number;
  /** Rank 0's Gloo address. */
  hostname: string;
  /** Memory bandwidth of one large copy (read + write bytes counted), GB/s. */
  memcpyGbps: number;
  rows: AlltoallRow[];
  /** Mean busbw over the sizes, as nccl-tests' "Avg bus bandwidth". */
  avgBusbw: number;
}

const MiB = 2 ** 20;

function pad(s: string, n: number): string {
  return s.length >= n ? s : " ".repeat(n - s.length) + s;
}

/** The table nccl-tests prints, plus the ratio of busbw to the memcpy bandwidth. */
export function formatAlltoallTable(r: BenchAlltoallResult): string[] {
  const hosts = r.worldSize / r.localWorldSize;
  const where =
    hosts === 1
      ? `${r.worldSize} ranks on this machine, Gloo over TCP (${r.hostname === "127.0.0.1" ? "loopback" : r.hostname})`
      : `${r.worldSize} ranks on ${hosts} hosts (${r.localWorldSize} each), Gloo over TCP (rank 0 at ${r.hostname})`;
  const lines = [
    `# moe-ep alltoall: ${where}, float32, allToAllV (counts exchanged, then rows)`,
    `# memcpy bandwidth: ${r.memcpyGbps.toFixed(2)} GB/s (one large copy, read + write bytes counted)`,
    `# time: the slowest rank's mean; algbw = size / time; busbw = algbw * (n-1)/n`,
    "#",
    `#${pad("size", 12)}${pad("count", 12)}${pad("type", 9)}${pad("time", 11)}${pad("algbw", 9)}${pad("busbw", 9)}${pad("#wrong", 8)}${pad("busbw/memcpy", 14)}`,
    `#${pad("(B)", 12)}${pad("(elements)", 12)}${pad("", 9)}${pad("(us)", 11)}${pad("(GB/s)", 9)}${pad("(GB/s)", 9)}${pad("", 8)}${pad("", 14)}`,
  ];
  for (const row of r.rows) {
    lines.push(
      ` ${pad(String(row.bytes), 12)}${pad(String(row.count), 12)}${pad("float", 9)}${pad(row.timeUs.toFixed(1), 11)}` +
        `${pad(row.algbw.toFixed(3), 9)}${pad(row.busbw.toFixed(3), 9)}${pad(String(row.wrong), 8)}` +
        `${pad(((100 * row.busbw) / r.memcpyGbps).toFixed(1) + "%", 14)}`,
    );
  }
  lines.push(
    `# Out of bounds values : ${r.rows.reduce((a, row) => a + row.wrong, 0)} ${r.rows.some((row) => row.wrong) ? "FAILED" : "OK"}`,
  );
  lines.push(`# Avg bus bandwidth    : ${r.avgBusbw.toFixed(3)} GB/s`);
  return lines;
}

/**
 * Runs the benchmark and logs its table. Resolves with the result on the host
 * of rank 0 (the only host, unless launchArgs say otherwise) and with null on
 * the other hosts, whose ranks took part.
 */
export async function benchAlltoall(options: BenchAlltoallOptions = {}): Promise<BenchAlltoallResult | null> {
  if (options === null || typeof options !== "object")
    throw invalid("an options object", "benchAlltoall options", options);
  const worldSize = checkInteger("worldSize", options.worldSize ?? 2, 1, 64);
  const minBytes = checkInteger("minBytes", options.minBytes ?? 1024, 4 * worldSize, 2 ** 34);
  const maxBytes = checkInteger("maxBytes", options.maxBytes ?? 64 * MiB, minBytes, 2 ** 34);
  const timeoutMs = checkInteger("timeoutMs", options.timeoutMs ?? 120000, 1);
  const launchArgs = options.launchArgs ?? [];
  if (!Array.isArray(launchArgs) || launchArgs.some((a) => typeof a !== "string"))
    throw invalid("an array of strings", "launchArgs", launchArgs);
  const log = options.log === undefined ? (line: string) => console.log(line) : (options.log ?? (() => undefined));

  const worker = path.join(packageRoot, "dist", "bench", "alltoall-worker.js");
  if (!fs.existsSync(worker)) {
    throw new MoEError(
      `benchAlltoall: ${worker} is missing; build the TypeScript first (npm run build:ts)`,
      "ERR_MOE_LOAD",
    );
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-ep-alltoall-"));
  const out = path.join(dir, "result.json");
  try {
    const code = await launch([
      "-n",
      String(worldSize),
      ...launchArgs,
      "--",
      worker,
      "--out",
      out,
      "--min",
      String(minBytes),
      "--max",
      String(maxBytes),
      "--timeout",
      String(timeoutMs),
    ]);
    if (code === 0 && !fs.existsSync(out)) {
      log("# moe-ep alltoall: this host's ranks took part; rank 0's host prints the table");
      return null;
    }
    if (code !== 0) {
      throw new MoEError(
        `benchAlltoall: the ranks failed (exit code ${code}); their output is above`,
        "ERR_MOE_INTERNAL",
      );
    }
    const report = JSON.parse(fs.readFileSync(out, "utf8")) as AlltoallWorkerReport;
    const avgBusbw = report.rows.reduce((a, r) => a + r.busbw, 0) / Math.max(1, report.rows.length);
    const result: BenchAlltoallResult = {
      worldSize: report.worldSize,
      localWorldSize: report.localWorldSize,
      hostname: report.hostname,
      memcpyGbps: report.memcpy.gbps,
      rows: report.rows,
      avgBusbw,
    };
    for (const line of formatAlltoallTable(result)) log(line);
    return result;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
