"""mailstack: a complete, secure, self-hosted mail server from one config file."""

from __future__ import annotations

__version__ = "0.2.0.dev0"
