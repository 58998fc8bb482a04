"""Fuzz harness: The raw restricted engine (``allowlist.new_engine``) on pickles back to back: values or PtfileError.

    python fuzz/fuzz_engine.py [libFuzzer options] [CORPUS_DIR ...]   (or: python fuzz/run.py engine)
"""

from common import fuzz

if __name__ == "__main__":
    fuzz("engine")
