"""Issue 22, "What was found": each command that showed a traceback, accepted something wrong or said
something misleading, run with that input; it must end with a clear message and the right exit status.

Server commands (``serve``, ``demo-backend``, ``receive``) run as real processes: they install an event
loop policy that must not leak into this process.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.security.passwords import hash_password
from gateway.security.pki import make_set

from .conftest import BMRGW, free_port, write_yaml


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "endpoints.yaml"
    write_yaml(path, {"gateway": {"name": "gw", "db": f"sqlite:///{tmp_path}/gw.db", "data_dir": str(tmp_path / "var")},
                      "endpoints": {"kaigo": {"urls": ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]},
                                    "zei": {"url": "http://127.0.0.1:9/zei"}}})
    return path


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def process(*argv: str | Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BMRGW, *map(str, argv)], capture_output=True, text=True, timeout=timeout)


def one_message(err: str) -> str:
    """stderr must be one or two lines and no traceback."""
    assert "Traceback" not in err
    assert 1 <= len(err.strip().splitlines()) <= 2, err
    return err


# -- tracebacks --------------------------------------------------------------------


@pytest.mark.parametrize("command", [["demo-backend"], ["receive", "--dir", "IN"], ["serve", "--config", "CONFIG"]])
def test_a_server_on_a_port_in_use_says_so_without_a_traceback(command: list[str], taken_port: int,
                                                                 config: Path, tmp_path: Path) -> None:
    argv = [str(tmp_path / "in") if a == "IN" else str(config) if a == "CONFIG" else a for a in command]
    done = process(*argv, "--port", str(taken_port))
    err = one_message(done.stderr)
    assert f"cannot listen on 127.0.0.1:{taken_port}: address already in use" in err.lower()
    assert "invalid configuration" not in err
    assert done.returncode == 2


def test_serve_workers_do_not_announce_themselves_on_a_port_in_use(taken_port: int, config: Path) -> None:
    done = process("serve", "--config", config, "--workers", "2", "--port", str(taken_port))
    assert "workers on" not in done.stdout
    assert "address already in use" in one_message(done.stderr).lower()
    assert done.returncode == 2


def test_pki_into_a_folder_that_cannot_be_made(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "pki", "--out", "/proc/nope")
    assert "/proc/nope" in one_message(err) and "No such file or directory" in err
    assert code == 1


def test_pki_refuses_a_certificate_name_that_is_a_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["pki", "--out", str(tmp_path), "--server", "bad/name"])
    assert exit_.value.code == 2
    assert "'bad/name'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_poll_refuses_a_server_url_without_a_scheme(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["poll", "--server", "127.0.0.1:8085/jx", "--receiver-id", "1310001", "--out", str(tmp_path), "--once"])
    assert exit_.value.code == 2
    assert "http://" in one_message(capsys.readouterr().err.splitlines()[-1])


@pytest.mark.parametrize("command", [["logs"], ["logs", "verify"], ["jx", "list"]])
def test_an_unsupported_store_url_is_named(command: list[str], config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *command, "--config", config, "--db", "mysql://x")
    assert "'mysql://x'" in one_message(err) and "postgresql://" in err
    assert code == 2


def test_serve_with_an_unsupported_store_url(config: Path) -> None:
    done = process("serve", "--config", config, "--db", "mysql://x", "--port", "0")
    assert "'mysql://x'" in one_message(done.stderr)
    assert done.returncode == 2


# -- accepted although wrong -------------------------------------------------------


def test_a_url_with_a_space_is_refused(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = config.read_text()
    code, _, err = run(capsys, "endpoints", "add", "bad", "--url", "http://exa mple/x", "--config", config)
    assert code == 2 and "'http://exa mple/x'" in one_message(err)
    assert config.read_text() == before
    config.write_text(before.replace("http://127.0.0.1:9/zei", "http://exa mple/x"))
    code, _, err = run(capsys, "endpoints", "check", "--config", config)
    assert code == 2 and "endpoints.zei.url" in err


def test_serve_refuses_a_port_out_of_range(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--config", str(config), "--port", "99999"])
    assert exit_.value.code == 2
    assert "99999" in capsys.readouterr().err


def test_wss_sign_refuses_a_key_that_does_not_match_the_certificate(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    made = make_set(tmp_path, servers=["s"], clients=["c"], signers=["one", "two"], hosts=["localhost"], days=2)
    envelope = tmp_path / "m.xml"
    envelope.write_bytes((Path(__file__).parent / "data" / "valid" / "soap11-no-header.xml").read_bytes())
    code, out, err = run(capsys, "wss", "sign", envelope, "--key", made["one"].key, "--cert", made["two"].cert)
    assert code == 2 and "does not match" in one_message(err)
    assert out == ""


def test_jx_put_warns_when_no_client_may_poll_the_receiver(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "jx.yaml"
    write_yaml(config, {"gateway": {"name": "gw", "db": f"sqlite:///{tmp_path}/gw.db"},
                        "clients": {"city": {"basic": {"user": "city", "password_hash": hash_password("pw")},
                                             "jx": {"receive": ["1310001"]}}}})
    document = tmp_path / "doc.txt"
    document.write_text("hello")
    code, out, err = run(capsys, "jx", "put", document, "--to", "1310001", "--config", config)
    assert code == 0 and "stored" in out and err == ""
    code, out, err = run(capsys, "jx", "put", document, "--to", "9999999", "--config", config)
    assert code == 0 and "stored" in out
    assert "no client" in one_message(err) and "'9999999'" in err


def test_set_one_url_on_a_failover_list_is_refused(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = config.read_text()
    code, _, err = run(capsys, "endpoints", "set", "kaigo", "--url", "http://127.0.0.1:9/c", "--config", config)
    assert code == 2 and "http://127.0.0.1:9/a" in one_message(err) and "--url" in err
    assert config.read_text() == before
    code, out, _ = run(capsys, "endpoints", "set", "kaigo", "--url", "http://127.0.0.1:9/c",
                       "--url", "http://127.0.0.1:9/d", "--config", config)
    assert code == 0
    code, out, _ = run(capsys, "endpoints", "show", "kaigo", "--config", config)
    assert "http://127.0.0.1:9/c" in out and "http://127.0.0.1:9/d" in out


def test_show_lists_every_url_of_a_failover_list(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "endpoints", "show", "kaigo", "--config", config)
    assert code == 0 and "http://127.0.0.1:9/a" in out and "http://127.0.0.1:9/b" in out


# -- misleading --------------------------------------------------------------------


def test_an_unknown_endpoint_is_not_an_invalid_configuration(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for action in (["set", "nope", "--timeout", "3"], ["remove", "nope"]):
        code, _, err = run(capsys, "endpoints", *action, "--config", config)
        assert code == 1 and "no endpoint named 'nope'" in one_message(err)
        assert "invalid configuration" not in err


def test_a_missing_config_file_is_not_an_invalid_configuration(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "endpoints", "list", "--config", tmp_path / "missing.yaml")
    assert code == 2 and "missing.yaml" in one_message(err) and "No such file" in err
    assert "invalid configuration" not in err


def test_send_after_a_404_does_not_suggest_resuming(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aiohttp import web

    from .conftest import start_app

    async def missing(_: web.Request) -> web.Response:
        return web.Response(status=404, text="not here")

    import asyncio

    async def go() -> tuple[int, str]:
        app = web.Application()
        app.router.add_post("/{tail:.*}", missing)
        runner, url = await start_app(app)
        try:
            code = await asyncio.to_thread(main, ["send", str(config_file(tmp_path)), "--to", "x", "--gateway", url])
        finally:
            await runner.cleanup()
        return code, capsys.readouterr().err

    code, err = asyncio.run(go())
    assert "404" in one_message(err) and "again to resume" not in err
    assert code == 1


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "file.txt"
    path.write_text("some content")
    return path


def test_send_refuses_a_gateway_url_without_a_scheme(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["send", str(config_file(tmp_path)), "--to", "x", "--gateway", "127.0.0.1:8080"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "http://" in err and "again to resume" not in err


def test_send_with_https_to_a_plain_http_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    from aiohttp import web

    from .conftest import start_app

    async def go() -> tuple[int, str]:
        runner, url = await start_app(web.Application())
        try:
            code = await asyncio.to_thread(main, ["send", str(config_file(tmp_path)), "--to", "x",
                                                  "--gateway", url.replace("http://", "https://")])
        finally:
            await runner.cleanup()
        return code, capsys.readouterr().err

    code, err = asyncio.run(go())
    assert "http://" in one_message(err) and "--ca" not in err
    assert code == 2


def test_reset_with_no_gateway_running_fails(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.serve import control
    from gateway.store import Store, database_url
    from routing.config import load_config

    store = Store(database_url(load_config(config)))  # a store some gateway used once, none runs now
    control.ensure_tables(store.engine)
    store.close()
    code, out, err = run(capsys, "endpoints", "reset", "kaigo", "--config", config)
    assert "circuits closed" not in out
    assert "no running gateway" in one_message(err)
    assert code == 1


def test_reset_reaches_a_running_gateway(config: Path, gateway_port: int,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "endpoints", "reset", "kaigo", "--config", config)
    assert code == 0 and "circuits closed" in out


@pytest.fixture
def gateway_port(config: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([*BMRGW, "serve", "--config", str(config), "--port", str(port), "--log-level", "WARNING"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from .conftest import wait_healthy

        wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
