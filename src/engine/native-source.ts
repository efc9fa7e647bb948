/**
 * Where bun:ffi's TinyCC reads the C code shimmy compiles at start-up (threadpool.c, greedy.c,
 * hugepages.c): `cc` takes a path, and in the single-file executable the sources exist only as
 * embedded text, so each is written once per content under the temp dir.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, renameSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import hookMarker from "./hook-marker.c" with { type: "text" };

/** Writes `source` where TinyCC can read it (once per content) and returns the path. */
export function nativeSourceFile(name: string, source: string): string {
  const dir = path.join(os.tmpdir(), "shimmy-native");
  const file = path.join(dir, `${name}-${createHash("sha256").update(source).digest("hex").slice(0, 12)}.c`);
  if (!existsSync(file)) {
    mkdirSync(dir, { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, source);
    renameSync(tmp, file);
  }
  return file;
}

/** A wrapper source with hook-marker.c (previous_hook / remember_hook) in front of it. */
export function hookSourceFile(name: string, source: string): string {
  return nativeSourceFile(name, `${hookMarker}\n${source}`);
}
