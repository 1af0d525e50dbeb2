"""Capability (D)'s programs: ``bmrgw send`` and ``bmrgw receive``."""
