"""A non-Python SOAP client: node-soap (npm ``soap``) reads /refdb?wsdl, then Upserts (records and a row)
and Queries."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import GatewayFactory
from .refdb_support import refdb_section

INTEROP = Path(__file__).parent / "interop" / "refdb"


@pytest.fixture(scope="module")
def node_soap() -> Path:
    """The interop script with node-soap installed from the lock file (``npm ci``) if missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed for the node-soap interop test (apt-get install nodejs npm)")
    if not (INTEROP / "node_modules" / "soap").is_dir():
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=INTEROP, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"npm ci failed: {done.stderr[-2000:]}"
    return INTEROP / "refdb.js"


async def test_node_soap_upserts_and_queries(gateway: GatewayFactory, node_soap: Path) -> None:
    base = await gateway({"refdb": refdb_section()})
    process = await asyncio.create_subprocess_exec("node", str(node_soap), base, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    answer = json.loads(out)
    assert (int(answer["pushed"]["version"]), int(answer["pushed"]["inserted"])) == (1, 3)
    assert answer["records"] == [
        {"person_id": "N001", "name": "ノード 一郎", "fee": "12.50", "birth": None, "updated": None,
         "household": None, "active": None},
        {"person_id": "N002", "name": "node two", "fee": None, "birth": None, "updated": None,
         "household": None, "active": None},
        {"person_id": "N003", "name": "row & three", "fee": None, "birth": None, "updated": None,
         "household": "3", "active": None},
    ]
    assert answer["more"] in (False, "false")
    assert answer["fault"]["faultcode"] == "soap:Client" and "nope" in answer["fault"]["faultstring"]
