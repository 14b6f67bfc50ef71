"""The package logger (library code reports choices and dropped inputs there, the CLI shows them) and the console
that progress bars and training lines are drawn on (standard error, so that standard output stays the result)."""

from __future__ import annotations

import logging

from rich.console import Console

logger = logging.getLogger("bonemet")
console = Console(stderr=True)
