/** What `shimmy pull` was asked for: a Hugging Face repository (with a tag or file) or a URL. */
import { UsageError } from "../errors.ts";

export type PullSource =
  | {
      kind: "hf";
      /** `org/repo`. */
      repo: string;
      /** A quantisation (`Q4_K_M`, any case) or a file path ending in `.gguf`; undefined = the default choice. */
      tag?: string;
      /** The revision a hub file URL names (`/resolve/<rev>/...`); undefined = `--revision` or main. */
      revision?: string;
    }
  | { kind: "url"; url: URL };

const REPO = /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/;

export const SOURCE_FORMS = "hf:ORG/REPO[:QUANT|:FILE.gguf], hf.co/ORG/REPO[:QUANT], or an https:// URL of a .gguf file";

/**
 * Parses `hf:org/repo[:tag]` (also `hf.co/` and `huggingface.co/` prefixes, as Ollama and llama.cpp
 * write them) or an `http(s)://` URL. Throws UsageError naming the accepted forms.
 */
export function parseSource(raw: string): PullSource {
  const text = raw.trim();
  if (/^https?:\/\//i.test(text)) {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new UsageError(`not a valid URL: '${raw}'`);
    }
    if (/^(?:www\.)?(?:hf\.co|huggingface\.co)$/i.test(url.hostname)) {
      const parts = url.pathname.split("/").filter(Boolean).map(decodeURIComponent);
      if (parts.length === 2) return hfSource(parts.join("/"), raw);
      // A file's page or download link: verified like `hf:org/repo:path` (the hub publishes its sha256).
      if (parts.length >= 5 && (parts[2] === "resolve" || parts[2] === "blob") && /\.gguf$/i.test(parts.at(-1)!)) {
        return { kind: "hf", repo: `${parts[0]}/${parts[1]}`, tag: parts.slice(4).join("/"), revision: parts[3] };
      }
    }
    return { kind: "url", url };
  }
  const m = text.match(/^(?:hf:|hf\.co\/|huggingface\.co\/)(.*)$/i);
  if (!m) throw new UsageError(`cannot pull '${raw}': expected ${SOURCE_FORMS}`);
  return hfSource(m[1]!, raw);
}

function hfSource(rest: string, raw: string): PullSource {
  const colon = rest.indexOf(":");
  const repo = (colon < 0 ? rest : rest.slice(0, colon)).replace(/\/+$/, "");
  const tag = colon < 0 ? undefined : rest.slice(colon + 1).trim() || undefined;
  if (!REPO.test(repo)) throw new UsageError(`cannot pull '${raw}': the repository must be ORG/REPO (expected ${SOURCE_FORMS})`);
  return { kind: "hf", repo, tag };
}

/** True for http:// to a host other than loopback: the bytes travel unencrypted. */
export function isInsecureUrl(url: URL): boolean {
  if (url.protocol !== "http:") return false;
  const host = url.hostname.replace(/^\[|\]$/g, "");
  return !(host === "localhost" || host === "::1" || /^127\./.test(host));
}
