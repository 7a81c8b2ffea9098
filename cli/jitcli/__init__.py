"""jit: the command-line client of jit-broker."""
