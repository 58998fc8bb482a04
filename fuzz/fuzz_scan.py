"""Fuzz harness: ``ptfile.scan`` of any bytes gives one of the four verdicts or raises PtfileError.

    python fuzz/fuzz_scan.py [libFuzzer options] [CORPUS_DIR ...]   (or: python fuzz/run.py scan)
"""

from common import fuzz

if __name__ == "__main__":
    fuzz("scan")
