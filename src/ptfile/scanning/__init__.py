"""The loader run dry over every reading of a file, with a verdict."""
