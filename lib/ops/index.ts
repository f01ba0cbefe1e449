export * from "./gate";
export * from "./route";
