"""``python -m bench``: run the benchmark (``make bench`` does exactly this)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
