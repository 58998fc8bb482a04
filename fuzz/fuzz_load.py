"""Fuzz harness: ``ptfile.load`` (mmap, copy, records) on any bytes raises nothing but PtfileError.

    python fuzz/fuzz_load.py [libFuzzer options] [CORPUS_DIR ...]   (or: python fuzz/run.py load)
"""

from common import fuzz

if __name__ == "__main__":
    fuzz("load")
