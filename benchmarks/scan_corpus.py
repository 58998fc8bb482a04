"""Write the scanner corpus (``tests/corpus.py``) to a folder, with its ``manifest.json``.

    python benchmarks/scan_corpus.py OUT_DIR

Every hostile sample's payload would only create ``OUT_DIR/PAYLOAD-RAN``; no tool that
reads the corpus should ever make that file appear.  7z samples are written only when
``py7zr`` is installed.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from corpus import write_corpus  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the corpus into")
    args = parser.parse_args(argv)
    samples = write_corpus(args.out)
    counts = Counter(s.label for s in samples)
    print(f"wrote {len(samples)} samples to {args.out}: " + ", ".join(f"{n} {label}" for label, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
