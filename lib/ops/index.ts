export * from "./gate";
export * from "./route";
export * from "./permute";
export * from "./grouped-gemm";
export * from "./activation";
export * from "./adamw";
