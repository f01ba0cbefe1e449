export * from "./gate";
export * from "./grouped-gemm";
export * from "./activation";
export * from "./adamw";
