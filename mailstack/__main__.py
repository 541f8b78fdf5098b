"""``python -m mailstack``."""

from mailstack.cli import main

main()
