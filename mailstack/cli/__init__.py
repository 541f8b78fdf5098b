"""The command line: a thin Typer layer over mailstack's modules (see app.py)."""

from mailstack.cli.app import app, main

__all__ = ["app", "main"]
