/**
 * The browser playground at `/`: one self-contained page (inline style and script, embedded in the
 * binary by the text import) that chats through `/v1/chat/completions`. Its Content-Security-Policy
 * allows only its own inline code (by hash) and requests to this server, so the page can make no
 * external request.
 */
import { createHash } from "node:crypto";
import { Elysia } from "elysia";
import pageFile from "../playground/page.html" with { type: "text" };

const PAGE = pageFile as unknown as string;

/** `'sha256-…'` of each inline `<tag>` body, as CSP wants them. */
function inlineHashes(html: string, tag: "script" | "style"): string {
  const bodies = [...html.matchAll(new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`, "g"))].map((m) => m[1] ?? "");
  return bodies.map((b) => `'sha256-${createHash("sha256").update(b).digest("base64")}'`).join(" ");
}

export const PLAYGROUND_CSP = [
  "default-src 'none'",
  `script-src ${inlineHashes(PAGE, "script")}`,
  `style-src ${inlineHashes(PAGE, "style")}`,
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** Paths the page is served on; they carry no data, so they answer without an API key. */
export const PLAYGROUND_PATHS = new Set(["/", "/playground"]);

export function playgroundRoutes() {
  const page = () =>
    new Response(PAGE, {
      headers: {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": PLAYGROUND_CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
      },
    });
  return new Elysia({ name: "playground" }).get("/", page).get("/playground", page);
}
