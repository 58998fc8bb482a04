"""Fuzz harness: ``ptfile.open`` and reading every tensor, with and without mmap, raise nothing but PtfileError.

    python fuzz/fuzz_open.py [libFuzzer options] [CORPUS_DIR ...]   (or: python fuzz/run.py open)
"""

from common import fuzz

if __name__ == "__main__":
    fuzz("open")
