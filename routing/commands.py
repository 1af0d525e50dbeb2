"""``bmrgw endpoints`` — operator edits of the endpoint table (being written)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_endpoints_command(commands: Any, config_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``bmrgw endpoints …`` on the top-level sub-command set."""
