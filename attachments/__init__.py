"""SOAP attachments and off-site file transfer (SPEC.md capability D).

- :mod:`attachments.mime` — streaming multipart/related for SwA (WS-I AP 1.0) and MTOM/XOP;
- :mod:`attachments.zipstream` — a one-member zip as a stream (deflate, ZIP64), zip-bomb limits;
- :mod:`attachments.parts` — splitting into parts, the manifest with per-part and whole SHA-256;
- :mod:`attachments.staging` — reassembly that verifies and publishes atomically;
- :mod:`attachments.names` — refusing unsafe file names.

Everything but :mod:`attachments.staging` is pure: bytes in, bytes or events out.
"""

from .mime import MultipartReader, RelatedType, RootExtractor, parse_related
from .names import safe_file_name
from .parts import FileInfo, Manifest, PartInfo
from .staging import Staging
from .zipstream import ZipLimits, ZipReader, ZipWriter

__all__ = [
    "MultipartReader", "RelatedType", "RootExtractor", "parse_related", "safe_file_name", "FileInfo",
    "Manifest", "PartInfo", "Staging", "ZipLimits", "ZipReader", "ZipWriter",
]
