/**
 * Failures of `shimmy pull`. A source that cannot be chosen from (a bad source string, an ambiguous
 * quantisation, a file that exists and differs) is a UsageError (exit 1); anything that stops the
 * download itself is a PullError (exit 2, like a model that cannot load).
 */
import { ShimmyError, UsageError } from "../errors.ts";

/** The model could not be downloaded. */
export class PullError extends ShimmyError {
  override readonly status: number = 502;
  override readonly type: string = "pull_error";
}

/** The repository, revision or file does not exist at the source (or is hidden without a token). */
export class SourceNotFoundError extends PullError {
  override readonly status = 404;
  override readonly type = "pull_not_found";
}

/** The source refused the credentials (401/403): a private or gated repository. */
export class SourceAuthError extends PullError {
  override readonly status = 401;
  override readonly type = "pull_unauthorized";
}

/** The repository holds no GGUF file to pull. */
export class NoGgufError extends PullError {
  override readonly type = "pull_no_gguf";
}

/** The downloaded bytes do not match the size or checksum the source publishes. */
export class ChecksumError extends PullError {
  override readonly type = "pull_checksum_mismatch";
}

/** The connection kept failing after every retry. */
export class NetworkError extends PullError {
  override readonly type = "pull_network_error";
}

/** A folder or file could not be written: permissions, no space, not a directory. */
export class DiskError extends PullError {
  override readonly type = "pull_disk_error";
}

/** A tag or default that matches several files: `choices` lists them so the user can pick one. */
export class AmbiguousSourceError extends UsageError {
  constructor(message: string, readonly choices: string[]) {
    super(`${message}; pick one:\n${choices.map((c) => `  ${c}`).join("\n")}`);
  }
}

/** Ctrl-C or SIGTERM during a download: the partial is kept for the next run. Exit 130, as a shell reports SIGINT. */
export class InterruptedError extends PullError {
  override readonly exitCode = 130;
  override readonly type = "pull_interrupted";
}
