/**
 * Just enough ELF64 (little-endian) reading to patch a loaded shared object's import table from
 * outside it: the slots through which it calls a function, and where the file is mapped. Used by
 * greedy.ts and hugepages.ts, whose TinyCC code writes wrappers into those slots.
 */
import { readFileSync } from "node:fs";

/** The files mapped into this process, from /proc/self/maps text. */
export function mappedFiles(maps: string): Set<string> {
  const files = new Set<string>();
  for (const line of maps.split("\n")) {
    const i = line.indexOf("/");
    if (i >= 0) files.add(line.slice(i).replace(/ \(deleted\)$/, ""));
  }
  return files;
}

/**
 * The addresses, in this process, of the import slots through which the mapped shared object `file`
 * calls `symbol`, and the address range the file is mapped at; undefined when it is not mapped.
 */
export function slotAddresses(file: string, symbol: string, maps: string): { slots: number[]; start: number; end: number } | undefined {
  const where = mapping(file, maps);
  if (!where) return undefined;
  const elf = readFileSync(file);
  const bias = where.start - firstLoadAddress(elf);
  return { slots: importSlots(elf, symbol).map((offset) => bias + offset), ...where };
}

/**
 * Whether an import slot holds something shimmy may replace: the function itself (already bound), a
 * stub inside the slot's own library (not bound yet), or `previous`, the wrapper an earlier copy of
 * shimmy's code installed in this process (hook-marker.c).
 */
export function replaceable(current: number | null, real: number, where: { start: number; end: number }, previous: number | null): boolean {
  if (current === null) return false;
  return current === real || (current >= where.start && current < where.end) || (previous !== null && current === previous);
}

const R_JUMP_SLOT = new Set([7 /* x86_64 */, 1026 /* aarch64 */]);
const R_GLOB_DAT = new Set([6 /* x86_64 */, 1025 /* aarch64 */]);

/**
 * The import-table slots (offsets from the load address) through which an ELF64 little-endian shared
 * object calls `symbol`: its JUMP_SLOT and GLOB_DAT relocations. Empty when it has none.
 */
export function importSlots(elf: Uint8Array, symbol: string): number[] {
  const dv = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  if (elf.length < 64 || dv.getUint32(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) return [];
  const shoff = Number(dv.getBigUint64(0x28, true));
  const shentsize = dv.getUint16(0x3a, true);
  const shnum = dv.getUint16(0x3c, true);
  const sections = Array.from({ length: shnum }, (_, i) => {
    const o = shoff + i * shentsize;
    return { type: dv.getUint32(o + 4, true), offset: Number(dv.getBigUint64(o + 0x18, true)), size: Number(dv.getBigUint64(o + 0x20, true)), link: dv.getUint32(o + 0x28, true), entsize: Number(dv.getBigUint64(o + 0x38, true)) };
  });
  const slots: number[] = [];
  for (const rela of sections.filter((s) => s.type === 4 /* SHT_RELA */)) {
    const symtab = sections[rela.link];
    if (!symtab || symtab.type !== 11 /* SHT_DYNSYM */) continue;
    const strtab = sections[symtab.link];
    if (!strtab) continue;
    for (let o = rela.offset; o + 24 <= rela.offset + rela.size; o += rela.entsize || 24) {
      const info = dv.getBigUint64(o + 8, true);
      const type = Number(info & 0xffffffffn);
      if (!R_JUMP_SLOT.has(type) && !R_GLOB_DAT.has(type)) continue;
      const sym = symtab.offset + Number(info >> 32n) * (symtab.entsize || 24);
      const nameAt = strtab.offset + dv.getUint32(sym, true);
      const end = elf.indexOf(0, nameAt);
      if (new TextDecoder().decode(elf.subarray(nameAt, end)) === symbol) slots.push(Number(dv.getBigUint64(o, true)));
    }
  }
  return slots;
}

/** The lowest PT_LOAD address of an ELF64 file (what its first mapping's start corresponds to). */
function firstLoadAddress(elf: Uint8Array): number {
  const dv = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  const phoff = Number(dv.getBigUint64(0x20, true));
  const phentsize = dv.getUint16(0x36, true);
  const phnum = dv.getUint16(0x38, true);
  let min = Number.MAX_SAFE_INTEGER;
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    if (dv.getUint32(o, true) === 1 /* PT_LOAD */) min = Math.min(min, Number(dv.getBigUint64(o + 0x10, true)) - Number(dv.getBigUint64(o + 0x08, true)));
  }
  return min === Number.MAX_SAFE_INTEGER ? 0 : min;
}

/** Where a mapped file's offset 0 starts, and the end of its last mapping (from /proc/self/maps). */
function mapping(file: string, maps: string): { start: number; end: number } | undefined {
  let start: number | undefined;
  let end = 0;
  for (const line of maps.split("\n")) {
    const i = line.indexOf("/");
    if (i < 0 || line.slice(i).replace(/ \(deleted\)$/, "") !== file) continue;
    const [range, , offset] = line.split(/\s+/);
    const [a, b] = range!.split("-").map((h) => Number.parseInt(h, 16));
    if (Number.parseInt(offset!, 16) === 0 && start === undefined) start = a;
    end = Math.max(end, b!);
  }
  return start === undefined ? undefined : { start, end };
}
