"""Bytes in and out: sources read by offset and length (files, memory maps, URLs) and atomic writes."""
