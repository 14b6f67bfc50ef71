"""The package logger: library code reports choices and dropped inputs here, the CLI shows them."""

from __future__ import annotations

import logging

logger = logging.getLogger("bonemet")
