"""The reference database (SPEC.md capability F): city halls push, DC applications query.

A dataset declared under ``refdb.datasets`` in endpoints.yaml (:mod:`.config`)
gets tables and a read-only view (:mod:`.schema`); its owner pushes records
through ``POST /refdb`` (:mod:`.service`, wire format in :mod:`.wire`,
values typed by :mod:`.values`), which the store applies one version at a
time (:mod:`.store`, consistency explained there); readers query the copy
through the same service or the view.  ``bmrgw refdb`` (:mod:`.commands`,
:mod:`.client`, :mod:`.files`) pushes CSV/JSONL files and queries.

Only the declarations are imported here: ``routing.config`` reads them, and
the rest of the package builds on the gateway, which builds on routing.
"""

from .config import Column, ColumnType, Dataset, RefdbSettings, parse_refdb

__all__ = ["Column", "ColumnType", "Dataset", "RefdbSettings", "parse_refdb"]
