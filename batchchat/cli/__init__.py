"""The command line: the click commands (``commands``) and the terminal (``console``)."""

from .commands import main

__all__ = ["main"]
