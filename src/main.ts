#!/usr/bin/env bun
/**
 * Entry point and the only place that exits the process. Exit codes: 0 ok, 1 usage error,
 * 2 model / generation failure.
 */
import { renderUsage, runCommand, type CommandDef } from "citty";
import { main } from "./cli/index.ts";
import { isBindingTestChild, loadConfig } from "./config.ts";
import { embeddedRuntime, ensureNativeRuntime, nativeBuildInfo } from "./engine/runtime.ts";
import { ShimmyError } from "./errors.ts";
import { VERSION } from "./version.ts";

/** `shimmy --version`: shimmy, the llama.cpp release and the backends compiled in (no native code loaded). */
export function versionText(): string {
  const info = nativeBuildInfo();
  return `shimmy ${VERSION}\nllama.cpp ${info.llamaCppRelease} (node-llama-cpp ${info.nodeLlamaCppVersion})\nbackends: ${info.backends.join(", ")}\ntarget: ${info.target}\n`;
}

/** Follows positionals down the subcommand tree to the command `--help` asks about. */
async function resolveForHelp(rawArgs: string[]): Promise<[CommandDef<any>, CommandDef<any> | undefined]> {
  let cmd: CommandDef<any> = main;
  let parent: CommandDef<any> | undefined;
  for (const arg of rawArgs) {
    if (arg.startsWith("-")) continue;
    const subs = typeof cmd.subCommands === "function" ? await cmd.subCommands() : await cmd.subCommands;
    const sub = subs?.[arg];
    if (!sub) break;
    parent = cmd;
    cmd = await (typeof sub === "function" ? (sub as () => Promise<CommandDef<any>>)() : sub);
  }
  return [cmd, parent];
}

async function run(rawArgs: string[]): Promise<number> {
  if (rawArgs.includes("--help") || rawArgs.includes("-h") || rawArgs.length === 0) {
    const [cmd, parent] = await resolveForHelp(rawArgs);
    const usage = await renderUsage(cmd, parent);
    // citty colours its usage text; keep escape codes out of pipes and files.
    process.stdout.write(`${process.stdout.isTTY ? usage : usage.replace(/\x1b\[[0-9;]*m/g, "")}\n`);
    return 0;
  }
  if (rawArgs.length === 1 && (rawArgs[0] === "--version" || rawArgs[0] === "-v")) {
    process.stdout.write(versionText());
    return 0;
  }
  try {
    await runCommand(main, { rawArgs });
    return 0;
  } catch (err) {
    if (err instanceof ShimmyError) {
      process.stderr.write(`error: ${err.message}\n`);
      return err.exitCode;
    }
    if ((err as { name?: string }).name === "CLIError" || (err as { code?: string }).code?.startsWith?.("E_")) {
      process.stderr.write(`error: ${(err as Error).message}\nRun 'shimmy --help' for usage.\n`);
      return 1;
    }
    process.stderr.write(`error: ${(err as Error)?.stack ?? err}\n`);
    return 2;
  }
}

if (isBindingTestChild() && embeddedRuntime()) {
  // node-llama-cpp tests a native binary in a child before loading it; in a single-file executable
  // that child is this executable. Once node-llama-cpp is fully loaded, start its test handler
  // (build.ts turned it into a function); it answers over IPC and exits by itself.
  const config = loadConfig();
  await ensureNativeRuntime({ runtimeDir: config.runtimeDir, cacheDir: config.cacheDir });
  await import("./engine/llama.ts");
  globalThis.__shimmyBindingTestChild?.();
} else {
  const code = await run(process.argv.slice(2));
  // Let stdout drain before exiting (a pipe may still hold the last tokens).
  if (process.stdout.writableNeedDrain) await new Promise((r) => process.stdout.once("drain", r));
  process.exit(code);
}
