"""Defaults the command line names before it knows whether the server is installed (its help
text): kept free of the server's dependencies, which shared/config.py needs."""

from __future__ import annotations

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
