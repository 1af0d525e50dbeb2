"""``bmrgw completion``: the script completes commands, sub-commands, options and file names in a real bash."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.cli import COMMANDS, build_parser
from gateway.completion import command_paths

from .conftest import BMRGW


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "bmrgw.bash"
    done = subprocess.run([*BMRGW, "completion", "bash"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    path.write_text(done.stdout)
    return path


def _complete(script: Path, cwd: Path, *words: str) -> list[str]:
    """What bash offers after ``words`` (the last one is the word being completed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _bmrgw; "
               'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, cwd=cwd, timeout=30)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return sorted(filter(None, done.stdout.splitlines()))


def test_commands_and_sub_commands_complete(script: Path, tmp_path: Path) -> None:
    top = _complete(script, tmp_path, "bmrgw", "")
    assert {name for name, *_ in COMMANDS} | {"serve", "demo-backend", "hash-password"} <= set(top)
    assert _complete(script, tmp_path, "bmrgw", "lo") == ["logs"]
    assert _complete(script, tmp_path, "bmrgw", "logs", "v") == ["verify"]
    assert _complete(script, tmp_path, "bmrgw", "keys", "rotate", "--new") == ["--new-master"]
    assert _complete(script, tmp_path, "bmrgw", "--config", "x.yaml", "endpoints", "dis") == ["disable"]


def test_path_options_complete_file_names_and_others_do_not(script: Path, tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text("")
    (tmp_path / "sigma").mkdir()
    assert _complete(script, tmp_path, "bmrgw", "logs", "verify", "--config", "si") == ["sigma", "site.yaml"]
    assert _complete(script, tmp_path, "bmrgw", "serve", "--port", "si") == [], "a port is not a file name"


def test_the_script_covers_every_option_of_every_command(script: Path) -> None:
    text = script.read_text()
    paths = list(command_paths(build_parser()))
    assert len(paths) > 30, "every command path, sub-commands included"
    for path, subcommands, options, _ in paths:
        for word in subcommands + options:
            assert word in text, f"{path or 'bmrgw'}: {word}"


def test_zsh_gets_the_same_table_through_bashcompinit() -> None:
    done = subprocess.run([*BMRGW, "completion", "zsh"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("#compdef bmrgw\n")
    assert "bashcompinit" in done.stdout and "complete -o default -F _bmrgw bmrgw" in done.stdout
