/**
 * Single-file executables (`bun build --compile` with llama.cpp's native libraries embedded) are the
 * subject of a later issue; see ../shared/facts.md "Single-file executable" for the recipe. Until
 * then this script says so and fails, rather than producing a binary that cannot load a model.
 */
console.error("build.ts: single-file executables are not built yet; run from source with `bun src/main.ts` (see README).");
process.exit(1);
