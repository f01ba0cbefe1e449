export * from "./gate";
export * from "./permute";
