"""One module per on-disk format, reader and writer side by side, and the opener that picks one."""
