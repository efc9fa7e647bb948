/**
 * Every failure shimmy reports has one class here. Each carries its HTTP status, a stable `type`
 * (used by the OpenAI-style error body) and the CLI exit code, so the mapping is written once.
 */
export class ShimmyError extends Error {
  /** HTTP status this error is answered with. */
  readonly status: number = 500;
  /** Stable machine-readable kind. */
  readonly type: string = "server_error";
  /** Exit code of the CLI when a command fails with this error. */
  readonly exitCode: number = 2;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Malformed JSON, a field of the wrong type, a value out of range. `param` names the field. */
export class BadRequestError extends ShimmyError {
  override readonly status = 400;
  override readonly type = "invalid_request_error";
  override readonly exitCode = 1;
  constructor(message: string, options?: { cause?: unknown; param?: string }) {
    super(message, options);
    this.param = options?.param;
  }
  readonly param: string | undefined;
}

/** A CLI invocation that cannot run: missing argument, bad flag value. */
export class UsageError extends ShimmyError {
  override readonly status = 400;
  override readonly type = "invalid_request_error";
  override readonly exitCode = 1;
}

/** The prompt does not fit in the context window. */
export class PromptTooLongError extends BadRequestError {
  constructor(readonly promptTokens: number, readonly contextSize: number) {
    super(`prompt is ${promptTokens} tokens, which does not fit the context of ${contextSize} tokens (leave room for at least 1 generated token)`);
  }
}

/** No model is registered under the requested name. */
export class ModelNotFoundError extends ShimmyError {
  override readonly status = 404;
  override readonly type = "model_not_found";
  constructor(readonly model: string, readonly available: string[]) {
    super(`model '${model}' not found; available: ${available.length ? available.join(", ") : "(none)"}`);
  }
}

/** The model file could not be loaded (missing, malformed, unsupported, out of memory). */
export class ModelLoadError extends ShimmyError {
  override readonly status = 502;
  override readonly type = "model_load_error";
}

/** The backend failed while generating. */
export class GenerationError extends ShimmyError {
  override readonly status = 502;
  override readonly type = "generation_error";
}

/** The native llama.cpp backend could not be started. */
export class BackendError extends ShimmyError {
  override readonly status = 502;
  override readonly type = "backend_error";
}

/** Wraps anything into a ShimmyError, keeping ShimmyErrors as they are. */
export function toShimmyError(err: unknown, Fallback: new (message: string, options?: { cause?: unknown }) => ShimmyError = GenerationError): ShimmyError {
  if (err instanceof ShimmyError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new Fallback(message, { cause: err });
}

/** Too many requests are already waiting for the model. */
export class OverloadedError extends ShimmyError {
  override readonly status = 503;
  override readonly type = "server_overloaded";
}

/** A valid request that asks for something this model or build cannot do. */
export class UnsupportedError extends BadRequestError {}

/** No valid API key. */
export class UnauthorizedError extends ShimmyError {
  override readonly status = 401;
  override readonly type = "invalid_api_key";
  override readonly exitCode = 1;
}

/** A foreign origin or a Host that is not allowed. */
export class ForbiddenError extends ShimmyError {
  override readonly status = 403;
  override readonly type = "forbidden";
  override readonly exitCode = 1;
}

/** A request body over the limit. */
export class PayloadTooLargeError extends ShimmyError {
  override readonly status = 413;
  override readonly type = "request_too_large";
  override readonly exitCode = 1;
}
