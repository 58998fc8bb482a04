"""Zip archives: the directory read as torch's reader (miniz) reads it, and records written as torch writes them."""
