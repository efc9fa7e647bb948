/** C source files imported as text (`import source from "./x.c" with { type: "text" }`). */
declare module "*.c" {
  const text: string;
  export default text;
}
