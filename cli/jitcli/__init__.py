"""jit: the command-line client of jit-broker (never imports the broker's own code)."""

__version__ = "0.1.0"
