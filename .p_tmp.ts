import { createApp } from "./src/server/app.ts";
const engine: any = { options: { gpu: "cpu", threads: 1, ctxSize: 512, chatTemplate: "auto" }, list: async () => [], loadedNames: () => [], ps: () => [], state: "ready", observer: {} };
const app = createApp({ engine });
const nest = 10000;
const body = '{"a":'.repeat(nest) + "1" + "}".repeat(nest);
for (const path of ["/api/generate", "/tokenize", "/detokenize", "/v1/chat/completions"]) {
  const t0 = performance.now();
  const r = await app.handle(new Request("http://localhost" + path, { method: "POST", body }));
  console.log(path, r.status, Math.round(performance.now() - t0));
}
