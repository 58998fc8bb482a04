"""Fuzz harness: ``ptfile.load`` succeeds iff ``ptfile.scan`` says clean (with records: clean or unknown-class).

    python fuzz/fuzz_consistency.py [libFuzzer options] [CORPUS_DIR ...]   (or: python fuzz/run.py consistency)
"""

from common import fuzz

if __name__ == "__main__":
    fuzz("consistency")
