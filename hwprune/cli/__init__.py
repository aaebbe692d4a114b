"""The command line: one module per subcommand; they parse and print, the library does the work."""
from hwprune.cli.main import main

__all__ = ["main"]
