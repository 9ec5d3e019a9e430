"""The command line: flags in parser.py, commands in commands.py, every printed table in tables.py, output files
checked before and written all at once in outputs.py."""

from .commands import main

__all__ = ["main"]
