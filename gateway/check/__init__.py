"""The connection test (接続試験) a site runs against its gateway before going live (``bmrgw check``).

README "Bringing a site live": :mod:`.site` reads the site's settings,
:mod:`.network` and :mod:`.exchanges` hold the items, :mod:`.report` prints
the checklist and writes it as JSON and HTML, :mod:`.commands` runs them.
"""

from .commands import add_check_command, run_check
from .result import Result
from .site import Site, load_site

__all__ = ["add_check_command", "run_check", "Result", "Site", "load_site"]
