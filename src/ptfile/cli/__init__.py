"""The ptfile command line; the only part of ptfile that imports rich."""
