"""The ``medsi`` command line (click). Command bodies only call library functions."""

from medsi.cli.main import main

__all__ = ["main"]
