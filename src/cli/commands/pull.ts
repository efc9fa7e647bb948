/**
 * `shimmy pull <source>`: downloads a GGUF model (every part of a split set) from Hugging Face or a
 * URL into shimmy's models folder, resumably, verified against the published size and sha256.
 * stdout gets only the model's path (or `--json`); progress and messages go to stderr.
 */
import path from "node:path";
import { defineCommand } from "citty";
import { hubSettings } from "../../config.ts";
import { modelNameFromPath } from "../../engine/registry.ts";
import { UsageError } from "../../errors.ts";
import { InterruptedError } from "../../hub/errors.ts";
import { createProgress } from "../../hub/progress.ts";
import { pull } from "../../hub/pull.ts";
import { parseSource, SOURCE_FORMS } from "../../hub/source.ts";
import { log } from "../../log.ts";
import { configFrom, intFlag } from "../args.ts";

export default defineCommand({
  meta: { name: "pull", description: "Download a GGUF model from Hugging Face or a URL into shimmy's models folder (resumable, verified)" },
  args: {
    source: { type: "positional", description: SOURCE_FORMS, required: true },
    dir: { type: "string", description: "Folder to put the model in (default $XDG_DATA_HOME/shimmy/models, i.e. ~/.local/share/shimmy/models, which shimmy scans)", valueHint: "DIR" },
    revision: { type: "string", description: "Hugging Face branch, tag or commit (default main)", valueHint: "REV" },
    sha256: { type: "string", description: "Expected sha256 of a URL download (a split set: one per part, comma separated)", valueHint: "HEX" },
    force: { type: "boolean", description: "Replace a file of the same name that differs from the source" },
    retries: { type: "string", description: "Retries of a failing download (counted while no byte arrives) before giving up, 0-100 (default 5)", valueHint: "N" },
    json: { type: "boolean", description: "Print {name, path, files, size_bytes, sha256, source, already_present} instead of the path" },
  },
  async run({ args, rawArgs }) {
    configFrom({}, rawArgs);
    const settings = (() => {
      try {
        return hubSettings();
      } catch (err) {
        throw new UsageError((err as Error).message);
      }
    })();
    const source = parseSource(args.source);
    const sha256 = typeof args.sha256 === "string" ? args.sha256.split(",").map((s) => s.trim().toLowerCase()) : undefined;
    if (sha256?.some((s) => !/^[0-9a-f]{64}$/.test(s))) throw new UsageError(`--sha256 must be 64 hex digits (comma separated for a split set), got '${args.sha256}'`);
    const dir = path.resolve(typeof args.dir === "string" && args.dir ? args.dir : settings.modelsDir);

    const controller = new AbortController();
    const onSignal = (sig: NodeJS.Signals) => controller.abort(new InterruptedError(`interrupted (${sig}): the partial download is kept in ${settings.downloadsDir}; run the same pull again to resume`));
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    try {
      const result = await pull(source, {
        dir,
        downloadsDir: settings.downloadsDir,
        endpoint: settings.endpoint,
        token: settings.token,
        revision: typeof args.revision === "string" && args.revision ? args.revision : undefined,
        sha256,
        force: args.force === true,
        retries: intFlag("retries", args.retries, 0, 100),
        progress: createProgress(process.stderr),
        signal: controller.signal,
      });
      const name = modelNameFromPath(result.path.replace(/-\d{5}-of-\d{5}\.gguf$/i, ".gguf"));
      const parts = result.files.length > 1 ? ` (${result.files.length} parts)` : "";
      if (result.alreadyPresent) log.info(`already present: ${result.path}${parts} is identical to ${result.source}; nothing downloaded`);
      const scanned = dir === path.resolve(settings.modelsDir) || dir === path.resolve("models");
      log.info(`model ${name}${parts}: ${scanned ? `try \`shimmy generate ${name}\`` : `${dir} is not a folder shimmy scans: add --model-dirs ${dir} (or SHIMMY_MODEL_PATHS)`}`);
      if (args.json) {
        process.stdout.write(`${JSON.stringify({ name, path: result.path, files: result.files, size_bytes: result.sizeBytes, sha256: result.sha256, source: result.source, already_present: result.alreadyPresent })}\n`);
      } else process.stdout.write(`${result.path}\n`);
    } catch (err) {
      throw controller.signal.aborted && controller.signal.reason instanceof InterruptedError ? controller.signal.reason : err;
    } finally {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    }
  },
});
