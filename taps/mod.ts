/**
 * Tap plug-ins: types, the bus, the loader and the built-in taps.
 * @module
 */

export * from "./types.ts";
export * from "./bus.ts";
export * from "./loader.ts";
export * from "./metrics.ts";
export * from "./trace.ts";
