#!/usr/bin/env python3
"""Licence and source check of every crate in the build (what `cargo deny check licenses
sources` does), with no tool to install: reads `cargo metadata`. The advisory check is not
here: the RustSec database is a git repository, and CI reaches only package registries."""
import json
import re
import subprocess
import sys

ALLOWED = {
    "MIT", "Apache-2.0", "Apache-2.0 WITH LLVM-exception", "BSD-1-Clause", "BSD-2-Clause",
    "BSD-3-Clause", "ISC", "Unicode-3.0", "Unlicense", "Zlib", "CDLA-Permissive-2.0", "0BSD",
    "CC0-1.0", "BSL-1.0",
}
SOURCES = {None, "registry+https://github.com/rust-lang/crates.io-index"}


def allowed(expr: str) -> bool:
    """An SPDX expression is fine when some OR branch has only allowed AND terms."""
    expr = expr.strip()
    # Strip one pair of outer parentheses that enclose the whole expression.
    if expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, ch in enumerate(expr):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(expr) - 1:
                break
        else:
            return allowed(expr[1:-1])
    for op in (" OR ", " AND "):
        parts, depth, start = [], 0, 0
        for i, ch in enumerate(expr):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and expr.startswith(op, i):
                parts.append(expr[start:i])
                start = i + len(op)
        if parts:
            parts.append(expr[start:])
            test = any if op == " OR " else all
            return test(allowed(p) for p in parts)
    return expr in ALLOWED


def main() -> int:
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        check=True, capture_output=True, text=True).stdout)
    bad = []
    for p in meta["packages"]:
        lic = (p.get("license") or "").replace("/", " OR ")
        if not lic or not allowed(lic):
            bad.append(f"{p['name']} {p['version']}: licence {p.get('license')!r}")
        if p.get("source") not in SOURCES:
            bad.append(f"{p['name']} {p['version']}: source {p.get('source')}")
    for b in bad:
        print("licences/sources:", b, file=sys.stderr)
    print(f"licences/sources: {len(meta['packages'])} crates checked, {len(bad)} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    assert allowed("(MIT OR Apache-2.0) AND Unicode-3.0")
    assert not allowed("GPL-3.0")
    assert not allowed("MIT AND GPL-3.0")
    assert allowed("MIT OR Apache-2.0 OR LGPL-2.1-or-later")
    sys.exit(main())
