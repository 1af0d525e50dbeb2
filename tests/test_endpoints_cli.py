"""``bmrgw endpoints``: the operator CLI over real config files and real processes.

The edit tests compare whole file texts, so they fail on any stray change of
a line the edit did not touch (comments, key order, quoting, flow style).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main
from routing import edit
from routing.config import UrlEndpoint, load_config
from routing.edit import Target, edit_file, insert_endpoint, lock_path

DATA = Path(__file__).parent / "data" / "endpoints"
VALID = sorted((DATA / "valid").glob("*.yaml"))
INVALID = sorted((DATA / "invalid").glob("*.yaml"))
COMMENTED = (DATA / "valid" / "commented.yaml").read_text(encoding="utf-8")

#: What ``check`` must point at for each file of tests/data/endpoints/invalid.
INVALID_BECAUSE = {
    "bad-url": "endpoints.kaigo.url: 'ftp://127.0.0.1/kaigo' must be an http:// or https:// URL",
    "both-url-and-via": "endpoints.kaigo: needs exactly one of url or via",
    "not-yaml": "not valid YAML",
    "unknown-key": "endpoints.kaigo: unknown key 'retries'",
    "unknown-peer": "endpoints.juki-west.via: no peer named 'dc-nowhere'",
}

ZEI = "    url: http://127.0.0.1:9002/zei\n"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A copy of tests/data/endpoints/valid/commented.yaml to edit."""
    path = tmp_path / "endpoints.yaml"
    path.write_text(COMMENTED, encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main(["endpoints", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def comments(text: str) -> list[str]:
    return re.findall(r"#.*", text)


def strays(folder: Path, config: Path) -> set[str]:
    """Files an edit left beside the config, other than the config and its lock file."""
    return {p.name for p in folder.iterdir()} - {config.name, lock_path(config).name}


def commented_line(code: str, like: str) -> str:
    """``code`` followed by the end of line comment of ``like``, at the same column."""
    column = like.index("#")
    return code.ljust(column) + like[column:]


# -- reading ------------------------------------------------------------------------


def test_list_prints_aligned_table_in_file_order(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = run(capsys, "list", "--config", config)
    assert code == 0
    assert out.splitlines() == [
        "NAME       KIND  TARGET                       TIMEOUT",
        "kaigo      url   http://127.0.0.1:9001/kaigo  30 s",
        "juki-west  via   dc-west                      10 s",
        "zei        url   http://127.0.0.1:9002/zei    30 s",
        "",
        "PEER     URL                         TIMEOUT",
        "dc-west  http://127.0.0.1:8081/soap  10 s",
        "",
        "fallback peer: dc-west (names not listed above go there)",
        "",
        "circuits: all closed",
    ]


def test_list_json_resolves_via_endpoints_to_the_peer(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = run(capsys, "list", "--format", "json", "--config", config)
    assert code == 0
    listing = json.loads(out)
    assert [e["name"] for e in listing["endpoints"]] == ["kaigo", "juki-west", "zei"]
    assert listing["endpoints"][1] == {
        "name": "juki-west", "kind": "via", "disabled": False, "via": "dc-west",
        "posts_to": "http://127.0.0.1:8081/soap/juki-west", "timeout": 10.0,
    }
    assert listing["peers"] == [{"name": "dc-west", "url": "http://127.0.0.1:8081/soap", "timeout": 10.0}]
    assert listing["fallback_peer"] == "dc-west"


def test_list_of_an_empty_table_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--config", DATA / "valid" / "no-endpoints.yaml")
    assert code == 0
    assert out.splitlines()[0] == "no endpoints"
    assert "fallback peer: none" in out


def test_show_url_endpoint(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = run(capsys, "show", "kaigo", "--config", config)
    assert code == 0
    assert out.splitlines() == [
        "name:     kaigo",
        "kind:     url (a business AP's SOAP service)",
        "posts to: http://127.0.0.1:9001/kaigo",
        "timeout:  30 s",
    ]


def test_show_via_endpoint_gives_the_peer_url_it_resolves_to(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code, out, _ = run(capsys, "show", "juki-west", "--config", config)
    assert code == 0
    assert "peer:     dc-west" in out.splitlines()
    assert "posts to: http://127.0.0.1:8081/soap/juki-west" in out.splitlines()
    assert "timeout:  10 s (the peer's)" in out.splitlines()


def test_show_json(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = run(capsys, "show", "zei", "--format", "json", "--config", config)
    assert code == 0
    assert json.loads(out) == {"name": "zei", "kind": "url", "disabled": False, "posts_to": "http://127.0.0.1:9002/zei",
                               "timeout": 30.0}


def test_show_gives_the_character_profile(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    gaiji = Path(__file__).parent / "data" / "charset" / "gaiji-cp932.csv"
    path = tmp_path / "endpoints.yaml"
    path.write_text(f"""endpoints:
  city: {{url: "http://127.0.0.1:9/city", charset: {{encoding: cp932, gaiji: "{gaiji}", reduce: mj}}}}
  plain: {{url: "http://127.0.0.1:9/plain", charset: {{encoding: utf-8}}}}
  euc: {{url: "http://127.0.0.1:9/euc", charset: {{encoding: euc-jp, unmappable: substitute}}}}
""", encoding="utf-8")
    code, out, _ = run(capsys, "show", "city", "--config", path)
    assert code == 0
    assert "charset:  cp932 (Windows-31J); unmappable: refuse; reduce: mj" in out.splitlines()
    assert f"gaiji:    {gaiji} (4 mappings)" in out.splitlines()
    code, out, _ = run(capsys, "show", "euc", "--config", path)
    assert "charset:  euc-jp (EUC-JP); unmappable: substitute; reduce: none" in out.splitlines()
    assert not any(line.startswith("gaiji:") for line in out.splitlines())
    code, out, _ = run(capsys, "show", "plain", "--config", path)
    assert "charset:  utf-8 (bodies travel unchanged)" in out.splitlines()
    code, out, _ = run(capsys, "show", "city", "--format", "json", "--config", path)
    assert json.loads(out)["charset"] == {"encoding": "cp932", "label": "Windows-31J", "unmappable": "refuse",
                                          "reduce": "mj", "gaiji": str(gaiji), "gaiji_mappings": 4}


def test_show_unknown_name_fails_and_names_the_fallback(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, err = run(capsys, "show", "nenkin", "--config", config)
    assert code == 1
    assert out == ""
    assert "no endpoint named 'nenkin'" in err
    assert "fallback peer 'dc-west'" in err


def test_check_valid_file_prints_one_line_summary(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = run(capsys, "check", "--config", config)
    assert code == 0
    assert out == f"{config}: OK \N{EM DASH} 3 endpoints, 1 peer, fallback peer dc-west\n"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_check_invalid_file_exits_2_with_the_problem(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    code, out, err = run(capsys, "check", "--config", path)
    assert code == 2
    assert out == ""
    assert INVALID_BECAUSE[path.stem] in err
    assert err.startswith("bmrgw: invalid configuration: ")


def test_check_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "check", "--config", tmp_path / "absent.yaml")
    assert code == 2
    assert "cannot read" in err


# -- editing ------------------------------------------------------------------------


def test_add_url_endpoint_inserts_only_its_lines(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = run(capsys, "add", "kaigo2", "--url", "http://127.0.0.1:9003/kaigo2", "--timeout", "5",
                       "--config", config)
    assert code == 0
    assert out.splitlines() == [
        "added kaigo2 -> http://127.0.0.1:9003/kaigo2, timeout 5 s",
        f"{config} updated; a running gateway applies the change within 2 s",
    ]
    entry = "  kaigo2:\n    url: http://127.0.0.1:9003/kaigo2\n    timeout: 5\n"
    assert config.read_text() == COMMENTED.replace(ZEI, ZEI + entry)


def test_add_via_endpoint(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = run(capsys, "add", "nenkin", "--via", "dc-west", "--config", config)
    assert code == 0
    assert out.startswith("added nenkin -> via dc-west (http://127.0.0.1:8081/soap/nenkin)\n")
    assert config.read_text() == COMMENTED.replace(ZEI, ZEI + "  nenkin: {via: dc-west}\n")


def test_set_url_keeps_quoting_and_end_of_line_comment(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = run(capsys, "set", "kaigo", "--url", "http://10.0.0.7:9001/kaigo", "--config", config)
    assert code == 0
    assert out.startswith("changed kaigo: http://127.0.0.1:9001/kaigo, timeout 30 s -> "
                          "http://10.0.0.7:9001/kaigo, timeout 30 s\n")
    old = "    url: 'http://127.0.0.1:9001/kaigo'   # primary node"
    new = commented_line("    url: 'http://10.0.0.7:9001/kaigo'", old)
    assert config.read_text() == COMMENTED.replace(old, new)


def test_set_via_turns_url_endpoint_into_via_endpoint(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, _, _ = run(capsys, "set", "kaigo", "--via", "dc-west", "--config", config)
    assert code == 0
    old = "    url: 'http://127.0.0.1:9001/kaigo'   # primary node\n    timeout: 30\n"
    new = commented_line("    via: dc-west", old.splitlines()[0]) + "\n"
    assert config.read_text() == COMMENTED.replace(old, new)


def test_set_url_turns_via_endpoint_into_url_endpoint(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, _, _ = run(capsys, "set", "juki-west", "--url", "http://127.0.0.1:9004/juki", "--timeout", "7",
                     "--config", config)
    assert code == 0
    old = "  juki-west: {via: dc-west}         # through the peer"
    new = "  juki-west: {url: http://127.0.0.1:9004/juki, timeout: 7} # through the peer"
    assert config.read_text() == COMMENTED.replace(old, new)


def test_set_timeout_adds_it_after_the_url(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, _, _ = run(capsys, "set", "zei", "--timeout", "2.5", "--config", config)
    assert code == 0
    assert config.read_text() == COMMENTED.replace(ZEI, ZEI + "    timeout: 2.5\n")


def test_set_to_the_same_value_leaves_the_file_alone(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    inode = config.stat().st_ino
    code, out, _ = run(capsys, "set", "kaigo", "--timeout", "30", "--config", config)
    assert code == 0
    assert out.splitlines() == ["kaigo already is http://127.0.0.1:9001/kaigo, timeout 30 s", f"{config} left as it was"]
    assert config.stat().st_ino == inode
    assert config.read_text() == COMMENTED


def test_remove_takes_the_comment_block_above_the_entry(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = run(capsys, "remove", "juki-west", "--config", config)
    assert code == 0
    assert out.startswith("removed juki-west (was via dc-west (http://127.0.0.1:8081/soap/juki-west))\n")
    block = "\n  # Resident registry, held by the west DC.\n  juki-west: {via: dc-west}         # through the peer\n"
    assert config.read_text() == COMMENTED.replace(block, "")


def test_remove_first_entry(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, _, _ = run(capsys, "remove", "kaigo", "--config", config)
    assert code == 0
    block = ("  # Care insurance, moved to the new cluster in 2024.\n  kaigo:\n"
             "    url: 'http://127.0.0.1:9001/kaigo'   # primary node\n    timeout: 30\n\n")
    assert config.read_text() == COMMENTED.replace(block, "")


def test_remove_last_entry_keeps_the_comments_after_it(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, _, _ = run(capsys, "remove", "zei", "--config", config)
    assert code == 0
    assert config.read_text() == COMMENTED.replace("  zei:\n" + ZEI, "")


def test_remove_every_endpoint_then_add_one(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    for name in ("kaigo", "juki-west", "zei"):
        assert run(capsys, "remove", name, "--config", config)[0] == 0
    table = COMMENTED[COMMENTED.index("endpoints:"):COMMENTED.index("# Peer gateways")]
    head = "endpoints:                          # business-AP name -> where it lives\n"
    assert config.read_text() == COMMENTED.replace(table, head + "\n")
    assert load_config(config).endpoints == {}
    assert run(capsys, "add", "kaigo", "--url", "http://127.0.0.1:9001/kaigo", "--config", config)[0] == 0
    entry = "  kaigo:\n    url: http://127.0.0.1:9001/kaigo\n"
    assert config.read_text() == COMMENTED.replace(table, head + entry + "\n")


@pytest.mark.parametrize("name", ["commented", "single", "indent4"])
def test_add_then_remove_restores_the_file_byte_for_byte(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    original = (DATA / "valid" / f"{name}.yaml").read_bytes()
    path = tmp_path / "endpoints.yaml"
    path.write_bytes(original)
    assert run(capsys, "add", "extra", "--url", "http://127.0.0.1:9009/x", "--config", path)[0] == 0
    assert path.read_bytes() != original
    assert run(capsys, "remove", "extra", "--config", path)[0] == 0
    assert path.read_bytes() == original


@pytest.mark.parametrize("source", VALID, ids=lambda p: p.stem)
def test_add_keeps_every_comment_in_every_shape(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, source: Path
) -> None:
    path = tmp_path / "endpoints.yaml"
    shutil.copyfile(source, path)
    before = load_config(path)
    assert run(capsys, "add", "extra", "--url", "http://127.0.0.1:9009/x", "--config", path)[0] == 0
    text = path.read_text()
    after = load_config(path)
    assert list(after.endpoints) == [*before.endpoints, "extra"]
    assert after.endpoints["extra"] == UrlEndpoint(name="extra", url="http://127.0.0.1:9009/x")
    assert comments(text) == comments(source.read_text())
    if "{" not in source.read_text():  # block style: every old line is still there, in order
        new_lines = iter(text.splitlines())
        assert all(line in new_lines for line in source.read_text().splitlines())


def test_edit_keeps_file_mode_and_replaces_the_file(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    config.chmod(0o640)
    inode = config.stat().st_ino
    assert run(capsys, "add", "extra", "--url", "http://127.0.0.1:9009/x", "--config", config)[0] == 0
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert config.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert strays(config.parent, config) == set()


def test_edit_through_a_symlink_edits_its_target(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    link = config.parent / "current.yaml"
    link.symlink_to(config.name)
    assert run(capsys, "remove", "zei", "--config", link)[0] == 0
    assert link.is_symlink()
    assert "zei" not in load_config(config).endpoints


# -- refusals -----------------------------------------------------------------------

REFUSALS = [
    pytest.param(["add", "kaigo2", "--url", "ftp://127.0.0.1/k"],
                 "endpoints.kaigo2.url: 'ftp://127.0.0.1/k' must be an http:// or https:// URL", id="bad-url"),
    pytest.param(["add", "kaigo2", "--url", "http://"], "endpoints.kaigo2.url", id="url-without-host"),
    pytest.param(["add", "nenkin", "--via", "dc-nowhere"],
                 "endpoints.nenkin.via: no peer named 'dc-nowhere'", id="unknown-peer"),
    pytest.param(["add", "kaigo", "--url", "http://127.0.0.1:1/k"],
                 "an endpoint named 'kaigo' exists already", id="duplicate"),
    pytest.param(["add", "bad/name", "--url", "http://127.0.0.1:1/k"],
                 "'bad/name' is not a valid endpoint name", id="invalid-name"),
    pytest.param(["add", "kaigo2", "--url", "http://127.0.0.1:1/k", "--timeout", "0"],
                 "endpoints.kaigo2.timeout: must be a number between", id="zero-timeout"),
    pytest.param(["add", "nenkin", "--via", "dc-west", "--timeout", "5"],
                 "set the timeout on the peer", id="timeout-on-via"),
    pytest.param(["set", "juki-west", "--timeout", "5"], "set the timeout on the peer", id="set-timeout-on-via"),
    pytest.param(["set", "kaigo", "--url", "not a url"], "endpoints.kaigo.url", id="set-bad-url"),
    pytest.param(["set", "kaigo", "--via", "dc-nowhere"], "no peer named 'dc-nowhere'", id="set-unknown-peer"),
]
# An unknown NAME for set/remove is not an invalid configuration (issue 22): exit 1, tests/test_cli_errors.py.


@pytest.mark.parametrize(("argv", "because"), REFUSALS)
def test_refused_edit_changes_nothing(
    capsys: pytest.CaptureFixture[str], config: Path, argv: list[str], because: str
) -> None:
    code, out, err = run(capsys, *argv, "--config", config)
    assert code == 2
    assert out == ""
    assert err.startswith(f"bmrgw: invalid configuration: {config} not changed: ")
    assert because in err
    assert config.read_bytes() == COMMENTED.encode()
    assert strays(config.parent, config) == set()


@pytest.mark.parametrize("source", INVALID, ids=lambda p: p.stem)
def test_edit_of_an_invalid_file_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, source: Path
) -> None:
    path = tmp_path / "endpoints.yaml"
    shutil.copyfile(source, path)
    code, _, err = run(capsys, "add", "extra", "--url", "http://127.0.0.1:9009/x", "--config", path)
    assert code == 2
    assert f"{path} is invalid already, so it was not edited" in err
    assert INVALID_BECAUSE[source.stem] in err
    assert "bmrgw endpoints check" in err
    assert len(err.splitlines()) == 1
    assert path.read_bytes() == source.read_bytes()
    assert strays(tmp_path, path) == set()


def test_edit_of_a_missing_file_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    code, _, err = run(capsys, "remove", "kaigo", "--config", path)
    assert code == 2
    assert "cannot read" in err
    assert not path.exists()


def test_failed_write_leaves_the_file_and_no_temp_file(
    capsys: pytest.CaptureFixture[str], config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", disk_full)  # the rename over the old file
    code, _, err = run(capsys, "add", "extra", "--url", "http://127.0.0.1:9009/x", "--config", config)
    assert code == 1
    assert f"cannot write {config}: No space left on device" in err
    assert config.read_bytes() == COMMENTED.encode()
    assert strays(config.parent, config) == set()


def test_an_edit_gives_up_when_another_holds_the_lock_too_long(
    capsys: pytest.CaptureFixture[str], config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edit, "LOCK_TIMEOUT", 0.3)
    fd = os.open(lock_path(config), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        code, _, err = run(capsys, "remove", "zei", "--config", config)
    finally:
        os.close(fd)
    assert code == 1
    assert "another edit has held" in err
    assert config.read_bytes() == COMMENTED.encode()


def test_set_without_a_change_is_a_usage_error(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["endpoints", "set", "kaigo", "--config", str(config)])
    assert exit_.value.code == 2
    assert "nothing to change: give --url, --via or --timeout" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["add", "x"], ["add", "x", "--url", "http://a/", "--via", "dc-west"]])
def test_add_needs_exactly_one_of_url_and_via(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["endpoints", *argv])
    assert exit_.value.code == 2
    assert "--url" in capsys.readouterr().err


def test_endpoints_without_an_action_shows_the_actions(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["endpoints"])
    out = capsys.readouterr().out
    assert code == 2
    for action in ("list", "show", "add", "set", "remove", "check"):
        assert re.search(rf"^\s+{action}\s+\S", out, re.MULTILINE), action
    assert "bmrgw endpoints add juki-west --via dc-west" in out


@pytest.mark.parametrize(("action", "mentions"), [
    ("list", ["--format", "fallback peer"]),
    ("show", ["NAME", "<peer url>/NAME"]),
    ("add", ["--url URL", "--via PEER", "--timeout SECONDS", "file unchanged"]),
    ("set", ["--url URL", "--via PEER", "stays as it is"]),
    ("remove", ["UnknownDestination"]),
    ("check", ["Exit status 0", "endpoints.kaigo.url"]),
])
def test_help_of_each_action(capsys: pytest.CaptureFixture[str], action: str, mentions: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["endpoints", action, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert exit_.value.code == 0
    for text in ["--config PATH", *mentions]:
        assert text in out


# -- real processes -----------------------------------------------------------------


def bmrgw(*argv: str | Path) -> list[str]:
    """The command line of the installed console script (or the module if there is none)."""
    script = Path(sys.executable).with_name("bmrgw")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]
    return [*head, *map(str, argv)]


def test_console_script_edits_and_checks(config: Path) -> None:
    added = subprocess.run(bmrgw("endpoints", "add", "kaigo2", "--url", "http://127.0.0.1:9003/k", "--config", config),
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("added kaigo2 -> http://127.0.0.1:9003/k, timeout 30 s\n")
    refused = subprocess.run(bmrgw("endpoints", "add", "kaigo2", "--url", "http://127.0.0.1:9003/k", "--config", config),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "exists already" in refused.stderr
    checked = subprocess.run(bmrgw("endpoints", "check", "--config", config), capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0
    assert checked.stdout == f"{config}: OK \N{EM DASH} 4 endpoints, 1 peer, fallback peer dc-west\n"


@pytest.fixture
def watch(config: Path) -> Iterator[list[str]]:
    """Reads the config file in a loop while a test runs; collects every read that is not valid."""
    problems: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                load_config(config)
            except Exception as exc:  # noqa: BLE001 - any failure is a finding
                problems.append(repr(exc))

    reader = threading.Thread(target=read)
    reader.start()
    yield problems
    done.set()
    reader.join()


def test_concurrent_adds_from_many_processes_all_land(config: Path, watch: list[str]) -> None:
    names = [f"ap{i}" for i in range(8)]
    procs = [subprocess.Popen(bmrgw("endpoints", "add", name, "--url", f"http://127.0.0.1:9100/{name}",
                                    "--config", config), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name in names]
    results = [proc.communicate(timeout=60) + (proc.returncode,) for proc in procs]
    assert [code for _, _, code in results] == [0] * len(names), [err for _, err, _ in results]
    endpoints = load_config(config).endpoints
    assert set(names) <= set(endpoints)
    assert list(endpoints)[:3] == ["kaigo", "juki-west", "zei"]
    assert comments(config.read_text()) == comments(COMMENTED)
    assert strays(config.parent, config) == set()
    assert watch == []  # the gateway never sees a half-written file


def test_concurrent_edits_from_threads_all_land(config: Path) -> None:
    def add(name: str) -> None:
        target = Target(url=f"http://127.0.0.1:9100/{name}")
        edit_file(config, lambda doc: insert_endpoint(doc, name, target))

    names = [f"t{i}" for i in range(12)]
    threads = [threading.Thread(target=add, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(names) <= set(load_config(config).endpoints)


def test_an_editor_waits_for_the_lock(config: Path) -> None:
    fd = os.open(lock_path(config), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = subprocess.Popen(bmrgw("endpoints", "add", "late", "--url", "http://127.0.0.1:9100/late",
                                      "--config", config), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.5)  # ample time to start and edit, were it not blocked
        assert proc.poll() is None
        assert config.read_text() == COMMENTED
    finally:
        os.close(fd)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "late" in load_config(config).endpoints
