"""The ``argbench`` command line: ``argbench.cli.app`` builds the parser; one module per command family."""

from argbench.cli.app import main

__all__ = ["main"]
