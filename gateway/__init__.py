"""The bmrgw gateway: HTTP server, SOAP relay, health and metrics."""

__all__ = ["version"]


def version() -> str:
    """The installed package's version (pyproject.toml), for ``bmrgw --version``, ``/status`` and metrics."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("bmrgw")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"
