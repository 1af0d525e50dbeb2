"""The HTTP API relay (SPEC.md Version 2, "HTTP APIs and character sets"): ``/api/{ap}/{path}``."""

from .handler import ApiRelay, add_api
from .problem import PROBLEM_JSON, is_api_path, problem_bytes, problem_response

__all__ = ["ApiRelay", "add_api", "PROBLEM_JSON", "is_api_path", "problem_bytes", "problem_response"]
