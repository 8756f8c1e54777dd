#!/usr/bin/env python3
"""Writes the fuzzer's seed inventories into a directory: the example
inventories and every bad inventory of the table test
crates/inventory/tests/bad_inventories.rs (CASES as written, VALUE_CASES
applied to BASE_LB), one file each, named by case.

usage: tests/fuzz/seeds.py OUT_DIR
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
TABLE = ROOT / "crates/inventory/tests/bad_inventories.rs"
EXAMPLES = ["inventories/single.toml", "inventories/ha.toml", "inventories/vagrant/inventory.toml"]

# A Rust string literal: raw r#"..."# or plain "..." with escapes.
LIT = r'(r#".*?"#|"(?:[^"\\]|\\.)*")'


def unescape(lit: str) -> str:
    if lit.startswith('r#"'):
        return lit[3:-2]
    body = lit[1:-1]
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        n = body[i + 1]
        if n == "n":
            out.append("\n")
        elif n == "t":
            out.append("\t")
        elif n == "r":
            out.append("\r")
        elif n == "0":
            out.append("\0")
        elif n in "\\\"'":
            out.append(n)
        elif n == "u":
            end = body.index("}", i)
            out.append(chr(int(body[i + 3:end], 16)))
            i = end + 1
            continue
        elif n == "x":
            out.append(chr(int(body[i + 2:i + 4], 16)))
            i += 4
            continue
        elif n == "\n":
            # A line continuation: the newline and the next line's indent.
            j = i + 2
            while j < len(body) and body[j] in " \t\n":
                j += 1
            i = j
            continue
        else:
            raise ValueError(f"unknown escape \\{n}")
        i += 2
    return "".join(out)


def section(text: str, start: str) -> str:
    i = text.index(start)
    return text[i:text.index("\n];", i)]


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    text = TABLE.read_text()
    base_lb = unescape(re.search(r"const BASE_LB: &str = " + LIT + ";", text, re.S).group(1))
    count = 0
    for rel in EXAMPLES:
        (out / ("example-" + rel.replace("/", "-"))).write_text((ROOT / rel).read_text())
        count += 1
    for m in re.finditer(r'\(\s*"([a-z0-9_]+)",\s*' + LIT + r",\s*" + LIT + r",\s*\)",
                         section(text, "static CASES"), re.S):
        (out / f"bad-{m.group(1)}.toml").write_text(unescape(m.group(2)))
        count += 1
    for m in re.finditer(r'\(\s*"([a-z0-9_]+)",\s*' + LIT + r",\s*" + LIT + r",\s*" + LIT + r",\s*\)",
                         section(text, "static VALUE_CASES"), re.S):
        frm, to = unescape(m.group(2)), unescape(m.group(3))
        (out / f"value-{m.group(1)}.toml").write_text(base_lb.replace(frm, to, 1))
        count += 1
    print(f"{count} seeds in {out}")


if __name__ == "__main__":
    main()
