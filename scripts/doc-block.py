#!/usr/bin/env python3
"""Puts a bench script's results into docs/benchmarks.md between its markers.

    BLOCK="$table" python3 scripts/doc-block.py DOC NAME "SECTION TITLE"

replaces what lies between `<!-- NAME:start -->` and `<!-- NAME:end -->` in DOC with $BLOCK
(the rest of the file is kept as it is); without the markers, appends a section titled
SECTION TITLE that holds them. Creates DOC if it does not exist.
"""
import os
import sys


def main() -> int:
    if len(sys.argv) != 4 or "BLOCK" not in os.environ:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    path, name, title = sys.argv[1:]
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = start + "\n" + os.environ["BLOCK"].strip("\n") + "\n" + end
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmarks\n"
    a, b = text.find(start), text.find(end)
    if 0 <= a < b:
        text = text[:a] + block + text[b + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
