/** Shared by the benchmark scripts: the prompt and an SSE reader. */
/** The benchmark prompt: a new first word per run, so the prompt is evaluated anew each time (no KV-cache reuse). */
export function benchPrompt(i: number): string {
  return `Run ${i}. The committee met on Tuesday to discuss the harbour, the roads and the new school, and after a long debate about the budget they agreed to meet again next week to decide the order of the works and the people in charge of each one.`;
}

/** Reads an SSE body, calling `onData` per `data:` payload. */
export async function readSse(res: Response, onData: (data: string, event: string) => void) {
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i: number;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = "message";
      const data: string[] = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      onData(data.join("\n"), event);
    }
  }
}
