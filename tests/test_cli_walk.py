"""Every ``bmrgw`` sub-command, found by walking the argparse tree of :mod:`gateway.cli`, run with bad input.

The promise of ``gateway/cli.py`` is one message and an exit status, never a traceback.  Each command
runs with its required arguments filled with wrong values (a URL without a scheme, a name that is a
path, a file that cannot exist), then once more with each of: a config file that does not exist, a store
URL of a database bmrgw does not support, a port out of range.  It must stop within its time with a
non-zero status and something on stderr, and without a "Traceback" anywhere.

Each run is a forked child of this process, so the ~40 commands take seconds rather than a fresh
interpreter each; a child that hangs is killed and fails the test.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser

from .conftest import write_yaml

#: Seconds a command may take to refuse bad input.
LIMIT = 30.0


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable sub-command: its words after ``bmrgw`` and its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser)]
    # A command that runs by itself and also has sub-commands (``bmrgw pki``, ``bmrgw pki csr``) is both.
    found = [(path, parser)] if parser.get_default("run") is not None else []
    for action in subs:
        for name, child in action.choices.items():
            found += leaves(child, (*path, name))
    return found


COMMANDS = leaves(build_parser())


def bad_value(action: argparse.Action) -> str:
    """A wrong value for one argument, chosen by what it names."""
    if action.choices:
        return str(next(iter(action.choices)))
    words = f"{action.dest} {action.metavar or ''}".lower()
    if any(w in words for w in ("url", "server", "gateway")):
        return "127.0.0.1:8085/jx"
    if "port" in words:
        return "99999"
    if action.type is int or action.type is float:
        return "-1"
    if "file" in words or "pem" in words or "dir" in words or "path" in words or "out" in words:
        return "/proc/nope/x"
    return "bad/name"


def required_args(parser: argparse.ArgumentParser) -> list[str]:
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings:
            if action.nargs in ("?", "*", argparse.SUPPRESS) or isinstance(action, argparse._SubParsersAction):
                continue
            argv.append(bad_value(action))
        elif action.required:
            argv += [action.option_strings[0], bad_value(action)]
    return argv


def every_option_bad(parser: argparse.ArgumentParser) -> list[str]:
    """Each optional argument that takes a value, given a wrong one (the config stays the good one)."""
    argv: list[str] = []
    for action in parser._actions:
        if action.option_strings and not action.required and action.nargs != 0 and action.help != argparse.SUPPRESS:
            argv += [action.option_strings[0], bad_value(action)]
    return argv


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def variants(parser: argparse.ArgumentParser, config: Path, missing: Path) -> list[list[str]]:
    base = required_args(parser)
    has = options(parser)
    runs = [base + every_option_bad(parser)]
    if not runs[0] and "--config" not in has:
        return [["--no-such-option"]]  # it takes no value at all (`endpoints schema`): only a wrong option is bad
    if runs[0] and not every_option_bad(parser) and all(
            a.choices for a in parser._actions if not a.option_strings and a.nargs not in ("?", "*")):
        return [["not-a-choice" for _ in base]]  # only valid choices so far (`completion bash`): nothing was bad
    if base:
        runs.append(base + (["--config", str(config)] if "--config" in has else []))
    if "--config" in has:
        runs.append(base + ["--config", str(missing)])
    if "--db" in has:
        runs.append(base + ["--config", str(config), "--db", "mysql://x"])
    if "--port" in has:
        runs.append(base + (["--config", str(config)] if "--config" in has else []) + ["--port", "99999"])
    return runs


def _child(argv: list[str], out: str) -> None:
    os.chdir(os.path.dirname(out))  # whatever a command writes by default lands in the test's folder
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    # pytest's capture replaced the sys streams; the child writes where a terminal would show it.
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    sys.stdin = open(os.devnull)  # hash-password reads a line, and must not wait for a terminal
    from gateway.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_forked(argv: list[str], out: Path) -> tuple[int | None, str]:
    process = multiprocessing.get_context("fork").Process(target=_child, args=(argv, str(out)))
    process.start()
    process.join(LIMIT)
    if process.is_alive():
        process.kill()
        process.join()
        return None, out.read_text(errors="replace")
    return process.exitcode, out.read_text(errors="replace")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "endpoints.yaml"
    write_yaml(path, {"gateway": {"name": "walk", "db": f"sqlite:///{tmp_path}/walk.db",
                                  "data_dir": str(tmp_path / "var"), "listen": {"host": "127.0.0.1", "port": 1}},
                      "endpoints": {"kaigo": {"url": "http://127.0.0.1:9/kaigo"}}})
    return path


def test_the_walk_finds_every_command() -> None:
    names = {" ".join(words) for words, _ in COMMANDS}
    assert {"serve", "endpoints add", "endpoints reset", "logs verify", "jx put", "poll", "send", "receive",
            "pki", "wss sign", "refdb push", "demo-backend", "hash-password"} <= names
    assert len(names) >= 25


@pytest.mark.parametrize(("words", "parser"), COMMANDS, ids=[" ".join(w) for w, _ in COMMANDS])
def test_bad_input_never_shows_a_traceback(words: tuple[str, ...], parser: argparse.ArgumentParser,
                                           config: Path, tmp_path: Path) -> None:
    for number, argv in enumerate(variants(parser, config, tmp_path / "missing.yaml")):
        code, output = run_forked([*words, *argv], tmp_path / f"out{number}.txt")
        shown = f"bmrgw {' '.join([*words, *argv])}:\n{output}"
        assert "Traceback" not in output, shown
        assert code is not None, f"still running after {LIMIT:g} s: {shown}"
        assert code != 0 and output.strip(), shown

