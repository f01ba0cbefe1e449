export * from "./gate";
export * from "./permute";
export * from "./route";
