"""Fuzz harness: A tree drawn from the bytes saves, scans clean and loads back bit for bit.

    python fuzz/fuzz_save.py [libFuzzer options] [CORPUS_DIR ...]   (or: python fuzz/run.py save)
"""

from common import fuzz

if __name__ == "__main__":
    fuzz("save")
