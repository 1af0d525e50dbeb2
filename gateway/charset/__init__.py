"""Character profiles of partner systems (SPEC.md Version 2, "HTTP APIs and character sets")."""

from .convert import SUBSTITUTE, FromPartner, Loss, Losses, ToPartner
from .table import CharsetProfile, GaijiTable, load_gaiji, profile_from

__all__ = ["CharsetProfile", "GaijiTable", "load_gaiji", "profile_from", "ToPartner", "FromPartner", "Losses",
           "Loss", "SUBSTITUTE"]
