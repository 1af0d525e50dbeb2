"""bmrgw as an installed service (issue 22 item 3): ``bmrgw init``, the wheel, the systemd unit,
process titles, process and build-info metrics, and the Grafana/Prometheus files in deploy/."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from ruamel.yaml import YAML

from .conftest import BMRGW, RecordingBackend, free_port, message, soap11_headers, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _bmrgw(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BMRGW, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _serve(procs: list[subprocess.Popen[bytes]], config: Path, port: int, *extra: str) -> str:
    proc = subprocess.Popen([*BMRGW, "serve", "--config", str(config), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, timeout=30)
    return url


# -- bmrgw init ---------------------------------------------------------------------


async def test_init_writes_a_private_commented_config_that_serves_as_it_is(
        tmp_path: Path, served: list[subprocess.Popen[bytes]], backend: RecordingBackend) -> None:
    etc, port = tmp_path / "etc", free_port()
    done = _bmrgw("init", "--dir", etc, "--port", str(port), "--name", "dc-test", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = etc / "endpoints.yaml"
    for path in (config, etc / "log.key", etc / "master.key"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    for folder in (etc, etc / "var"):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    text = config.read_text()
    assert text.count("\n#") > 10, "the config explains itself in comments"
    assert "host: 127.0.0.1" in text and f"log_key: {etc / 'log.key'}" in text
    assert f"master_key: {etc / 'master.key'}" in text

    added = _bmrgw("endpoints", "add", "kaigo", "--url", backend.url, "--config", config)
    assert added.returncode == 0, added.stderr
    url = _serve(served, config, port)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/soap/kaigo", data=message("valid/soap11-no-header.xml"),
                             headers=soap11_headers()) as resp:
            assert resp.status == 200
        async with http.get(f"{url}/healthz") as resp:
            health = await resp.json()
    assert health["gateway"] == "dc-test" and health["store"]["ok"]
    assert (etc / "var" / "bmrgw.db").exists(), "the store is in the data folder, not the working directory"
    assert not (tmp_path / "var").exists()


def test_init_never_overwrites_a_config_or_a_key(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    assert _bmrgw("init", "--dir", etc).returncode == 0
    before = {p.name: p.read_bytes() for p in etc.iterdir() if p.is_file()}
    again = _bmrgw("init", "--dir", etc, "--no-encryption")
    assert again.returncode == 1 and "never overwrites" in again.stderr and "Traceback" not in again.stderr
    assert {p.name: p.read_bytes() for p in etc.iterdir() if p.is_file()} == before


def test_init_without_encryption_and_with_a_separate_data_folder(tmp_path: Path) -> None:
    etc, data = tmp_path / "etc", tmp_path / "lib" / "bmrgw"
    done = _bmrgw("init", "--dir", etc, "--data-dir", data, "--no-encryption")
    assert done.returncode == 0, done.stderr
    assert not (etc / "master.key").exists() and data.is_dir() and data.stat().st_mode & 0o777 == 0o700
    text = (etc / "endpoints.yaml").read_text()
    assert f"data_dir: {data}" in text and "\n  # encryption:" in text
    assert _bmrgw("endpoints", "check", "--config", etc / "endpoints.yaml").returncode == 0


@pytest.mark.parametrize("args, words", [
    (["--port", "99999"], "not a TCP port"),
    (["--dir", "/proc/nope"], "cannot write"),
])
def test_init_refuses_bad_input_in_a_line(tmp_path: Path, args: list[str], words: str) -> None:
    done = _bmrgw("init", *args, cwd=tmp_path)
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr


# -- the wheel --------------------------------------------------------------------------


def test_the_wheel_installs_outside_the_checkout_and_carries_its_data(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(tmp_path / "dist"), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("bmrgw-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("schemas/") and n.endswith(".wsdl") for n in names), "the WSDLs ship"
    assert "gateway/serve/init.py" in names and not any(n.startswith("tests/") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "bmrgw = gateway.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()

    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site),
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    # Run from elsewhere with the installed copy first on the path: the checkout plays no part.
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import gateway, schemas; print(gateway.__file__, schemas.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert where.stdout.split() == [str(site / "gateway" / "__init__.py"), str(site / "schemas" / "__init__.py")]
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "init", "--dir", str(tmp_path / "etc")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    version = subprocess.run([sys.executable, "-m", "gateway.cli", "--version"], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=60)
    assert re.fullmatch(r"bmrgw \d+\.\d+\.\d+\n", version.stdout)


# -- the systemd unit ----------------------------------------------------------------------


def _verify_unit(text: str, folder: Path) -> str:
    folder.mkdir(exist_ok=True)
    unit = folder / "bmrgw.service"
    unit.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    return (done.stdout + done.stderr).strip() + ("" if done.returncode == 0 else f" (exit {done.returncode})")


def test_the_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    text = (DEPLOY / "bmrgw.service").read_text()
    here = text.replace("/opt/bmrgw/bin/bmrgw", str(Path(sys.executable).parent / "bmrgw"))
    assert _verify_unit(here, tmp_path / "good") == ""
    # The check can fail: a typo in a directive is reported (so the empty output above means something).
    assert "twenty" in _verify_unit(here.replace("LimitNICE=20", "LimitNICE=twenty"), tmp_path / "bad")
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/var/lib/bmrgw",
                 "ExecReload=/bin/kill -HUP $MAINPID", "LimitNICE=20", "UMask=0077", "CapabilityBoundingSet="):
        assert f"\n{line}\n" in text, line
    command = re.search(r"^ExecStart=(.*)$", text, re.M)
    assert command is not None and "serve --config /etc/bmrgw/endpoints.yaml" in command.group(1)


# -- process titles and metrics ---------------------------------------------------------------


def _title(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()


def _children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (a child started from a thread is listed under that thread)."""
    return [int(p) for task in Path(f"/proc/{pid}/task").iterdir() for p in (task / "children").read_text().split()]


def _descendants(pid: int) -> list[int]:
    """Children, grandchildren…: a log writer is started by its worker's multiprocessing fork server."""
    found = _children(pid)
    return found + [d for child in found for d in _descendants(child)]


def _write_config(tmp_path: Path, port: int, endpoints: dict[str, object]) -> Path:
    from .conftest import write_yaml

    config = tmp_path / "endpoints.yaml"
    write_yaml(config, {"gateway": {"name": "gw-titles", "listen": {"host": "127.0.0.1", "port": port},
                                    "db": f"sqlite:///{tmp_path}/gw.db", "data_dir": str(tmp_path / "var")},
                        "endpoints": endpoints})
    return config


def test_ps_shows_the_supervisor_its_workers_and_their_log_writers(
        tmp_path: Path, served: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    _serve(served, _write_config(tmp_path, port, {}), port, "--workers", "2")
    supervisor = served[0].pid
    assert _title(supervisor) == f"bmrgw: supervisor of gw-titles (127.0.0.1:{port}, 2 workers)"
    deadline = time.monotonic() + 20
    while True:
        workers = _children(supervisor)
        titles = sorted(_title(pid) for pid in workers)
        writers = sorted(_title(pid) for pid in _descendants(supervisor) if "log writer" in _title(pid))
        if len(writers) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert titles == [f"bmrgw: worker {n} of gw-titles (127.0.0.1:{port})" for n in (1, 2)]
    assert writers == ["bmrgw: log writer of gw-titles.w1", "bmrgw: log writer of gw-titles.w2"]


async def test_metrics_carry_process_and_build_info(tmp_path: Path, served: list[subprocess.Popen[bytes]]) -> None:
    from gateway import version

    port = free_port()
    url = _serve(served, _write_config(tmp_path, port, {}), port)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as resp:
            text = await resp.text()
    rss = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)
    assert rss is not None and 10e6 < float(rss.group(1)) < 500e6
    assert re.search(r"^process_cpu_seconds_total \S+$", text, re.M)
    assert re.search(r"^process_open_fds \S+$", text, re.M)
    assert f'bmrgw_build_info{{python="{sys.version.split()[0]}",version="{version()}"}} 1.0' in text


# -- Grafana dashboard and Prometheus alerts -------------------------------------------------------


async def _metric_names(tmp_path: Path, served: list[subprocess.Popen[bytes]]) -> set[str]:
    port = free_port()
    url = _serve(served, _write_config(tmp_path, port, {"city": {"mailbox": "1310001"},
                                                         "down": {"url": "http://127.0.0.1:9/x"}}), port)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as resp:
            text = await resp.text()
    return set(re.findall(r"^# HELP (\w+) ", text, re.M))


def _named(expr: str) -> set[str]:
    found = set(re.findall(r"\b((?:bmrgw|process)_\w+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in found}


async def test_alert_rules_and_dashboard_name_only_metrics_the_gateway_serves(
        tmp_path: Path, served: list[subprocess.Popen[bytes]]) -> None:
    names = await _metric_names(tmp_path, served)
    rules = YAML(typ="safe").load((DEPLOY / "prometheus-alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 10
    for rule in alerts:
        assert rule["alert"].startswith("Bmrgw") and rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert _named(rule["expr"]) <= names, (rule["alert"], _named(rule["expr"]) - names)
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 12
    used = set().union(*map(_named, exprs))
    assert used <= names, used - names
    assert {"bmrgw_requests_total", "bmrgw_circuit_state", "bmrgw_log_records", "process_resident_memory_bytes",
            "bmrgw_jx_documents"} <= used
    assert "http" not in json.dumps(dashboard).replace("http_", ""), "no remote resources: LGWAN has no Internet"


# -- the access log ----------------------------------------------------------------------------------------

_COMBINED = re.compile(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "(\w+) (\S+) HTTP/1\.1" '
                       r'(\d{3}) (\d+) "-" "([^"]*)" \d+\.\d+')


async def test_access_log_writes_combined_format_lines_and_follows_logrotate(
        tmp_path: Path, served: list[subprocess.Popen[bytes]], backend: RecordingBackend) -> None:
    from .conftest import write_yaml

    port, log = free_port(), tmp_path / "logs" / "access.log"
    config = tmp_path / "endpoints.yaml"
    write_yaml(config, {"gateway": {"name": "gw-access", "listen": {"host": "127.0.0.1", "port": port},
                                    "db": f"sqlite:///{tmp_path}/gw.db", "data_dir": str(tmp_path / "var"),
                                    "access_log": "logs/access.log"},
                        "endpoints": {"kaigo": {"url": backend.url}}})
    url = _serve(served, config, port)
    async with aiohttp.ClientSession(headers={"User-Agent": "test-agent/1"}) as http:
        async with http.post(f"{url}/soap/kaigo", data=message("valid/soap11-no-header.xml"),
                             headers=soap11_headers()) as resp:
            assert resp.status == 200
        async with http.post(f"{url}/soap/nosuch", data=message("valid/soap11-no-header.xml"),
                             headers=soap11_headers()) as resp:
            assert resp.status == 404
        lines = _wait_lines(log, 3)  # the health checks of _serve, then the two posts
        assert log.stat().st_mode & 0o777 == 0o600, "the access log is private like every file the gateway writes"
        found = [m.groups() for m in map(_COMBINED.fullmatch, lines) if m]
        assert len(found) == len(lines), lines
        assert ("POST", "/soap/kaigo", "200") == found[-2][:3] and found[-2][4] == "test-agent/1"
        assert ("POST", "/soap/nosuch", "404") == found[-1][:3]
        log.rename(log.with_suffix(".log.1"))  # what logrotate does (no copytruncate)
        async with http.get(f"{url}/healthz") as resp:
            assert resp.status == 200
        assert [_COMBINED.fullmatch(line) is not None for line in _wait_lines(log, 1)] == [True]


def _wait_lines(path: Path, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{path} has fewer than {count} lines")


def test_access_log_is_off_by_default() -> None:
    from routing.settings import GatewaySettings

    assert GatewaySettings().access_log is None
