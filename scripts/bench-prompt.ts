/** The benchmark prompt: a new first word per run, so the prompt is evaluated anew each time (no KV-cache reuse). */
export function benchPrompt(i: number): string {
  return `Run ${i}. The committee met on Tuesday to discuss the harbour, the roads and the new school, and after a long debate about the budget they agreed to meet again next week to decide the order of the works and the people in charge of each one.`;
}
