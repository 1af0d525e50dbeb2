"""Another SOAP stack against /jx: a node-soap client generated from the official jx2007.wsdl."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from gateway.ns import JX

from .conftest import GatewayFactory

CLIENT = Path(__file__).parent / "interop" / "jx"


@pytest.fixture(scope="module")
def node_soap() -> Path:
    """tests/interop/jx with its node_modules (npm ci from the lock file when missing)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed for the JX interop test (Debian: apt-get install nodejs npm)")
    if not (CLIENT / "node_modules" / "soap").is_dir():
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return CLIENT


@pytest.mark.parametrize("hyphens", [True, False], ids=["published", "hyphen-less-copy"])
async def test_node_soap_put_get_confirm(hyphens: bool, node_soap: Path, gateway: GatewayFactory,
                                         tmp_path: Path) -> None:
    url = await gateway({"gateway": {"data_dir": str(tmp_path / "var")}})
    wsdl = str(resources.files("schemas").joinpath("jx2007.wsdl"))
    namespace = JX
    if not hyphens:  # issue 21 item 3: clients generated from WSDL copies whose namespace lost its hyphens
        namespace = JX.replace("jedicos-xml", "jedicosxml")
        copy = tmp_path / "jx2007-hyphenless.wsdl"
        copy.write_text(Path(wsdl).read_text(encoding="utf-8").replace(JX, namespace), encoding="utf-8")
        assert "jedicos-xml" not in copy.read_text(encoding="utf-8")
        wsdl = str(copy)
    proc = await asyncio.create_subprocess_exec(
        "node", str(node_soap / "client.js"), wsdl, f"{url}/jx", "1310001", namespace,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["put"] is True
    got = result["get"]
    assert got["result"] is True
    assert (got["messageId"], got["senderId"], got["receiverId"]) == (result["messageId"], "node-dc", "1310001")
    assert (got["formatType"], got["documentType"]) == ("TEXT", "notice")
    assert got["data"] == result["sent"] == "node-soap から JX 手順で送る文書"
    assert result["responseHeaderTo"] == "1310001"
    assert (result["confirm"], result["confirmAgain"]) == (True, False)
