"""tee-daemon: a hosting daemon whose projects ship evidence of what they run."""

__version__ = "0.1.0"
