/**
 * Turns a schema violation into one message that names the field, says what was expected and what
 * came: `invalid field 'max_tokens': expected an integer >= 1, got 0`. Shared by every route and by
 * the WebSocket, so all surfaces word validation errors alike.
 */
import type { TSchema } from "@sinclair/typebox";
import { Kind } from "@sinclair/typebox";

type AnySchema = TSchema & Record<string, any>;

function range(s: AnySchema): string {
  const lo = s.minimum ?? (s.exclusiveMinimum !== undefined ? `>${s.exclusiveMinimum}` : undefined);
  const hi = s.maximum;
  if (lo !== undefined && hi !== undefined) return ` from ${lo} to ${hi}`;
  if (lo !== undefined) return ` >= ${lo}`;
  if (hi !== undefined) return ` <= ${hi}`;
  return "";
}

/** A short English description of what a schema accepts. */
export function expectation(s: AnySchema | undefined): string {
  if (!s) return "a valid value";
  switch (s[Kind]) {
    case "Union": {
      // Elysia adds numeric-string alternatives (format "integer"/"numeric") for coercion: not worth naming.
      const parts = (s.anyOf as AnySchema[]).filter((x) => x[Kind] !== "Undefined" && !(x[Kind] === "String" && x.format));
      if (parts.every((p) => p.const !== undefined)) return `one of ${parts.map((p) => JSON.stringify(p.const)).join(", ")}`;
      return parts.map(expectation).join(" or ");
    }
    case "Literal":
      return JSON.stringify(s.const);
    case "Integer":
      return `an integer${range(s)}`;
    case "Number":
      return `a number${range(s)}`;
    case "String":
      return s.minLength ? "a non-empty string" : "a string";
    case "Boolean":
      return "true or false";
    case "Array":
      return `an array${s.maxItems !== undefined ? ` of at most ${s.maxItems} items` : ""} whose items are ${expectation(s.items)}`;
    case "Object":
      return "an object";
    case "Null":
      return "null";
    default:
      return "a valid value";
  }
}

/** The sub-schema at a JSON-pointer path (`/messages/0/role`), or undefined. */
export function schemaAt(root: AnySchema, pointer: string): AnySchema | undefined {
  let s: AnySchema | undefined = root;
  for (const seg of pointer.split("/").filter(Boolean)) {
    if (!s) return undefined;
    if (s[Kind] === "Union") s = (s.anyOf as AnySchema[]).find((x) => x[Kind] === "Array" || x[Kind] === "Object") ?? s;
    if (s[Kind] === "Object") s = s.properties?.[seg];
    else if (s[Kind] === "Array") s = s.items;
    else return undefined;
  }
  return s;
}

function shown(value: unknown): string {
  let text: string;
  try {
    text = value === undefined ? "nothing" : typeof value === "number" && !Number.isFinite(value) ? String(value) : (JSON.stringify(value) ?? String(value));
  } catch {
    text = String(value);
  }
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** Message for the first violation: field name, expectation, received value. */
export function violationMessage(root: AnySchema, pointer: string, value: unknown): string {
  const field = pointer.replace(/^\//, "").replace(/\//g, ".");
  if (!field) return `request body must be ${expectation(root)}`;
  const expected = expectation(schemaAt(root, pointer));
  if (value === undefined) return `missing field '${field}': expected ${expected}`;
  return `invalid field '${field}': expected ${expected}, got ${shown(value)}`;
}
