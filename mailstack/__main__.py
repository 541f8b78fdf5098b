"""``python -m mailstack``."""

from .cli import main

main()
