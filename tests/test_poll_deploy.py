"""The shipped ``deploy/`` files for a city hall: the systemd unit and the example poll.yaml are valid."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from gateway.jx.pollconfig import load_poll_config
from gateway.jx.schedule import Cron, Every

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_example_poll_yaml_is_what_the_client_reads(tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "poll.example.yaml", tmp_path / "poll.yaml")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "dc-tokyo.txt").write_text("s3cret-s3cret\n")
    config = load_poll_config(tmp_path / "poll.yaml")
    tokyo, kaigo = config.partners
    assert (tokyo.name, tokyo.credentials.password, tokyo.compression, tokyo.names) == (
        "dc-tokyo", "s3cret-s3cret", "gzip", "documentType")
    assert isinstance(tokyo.schedule, Cron) and tokyo.schedule.minutes == frozenset(range(0, 60, 10))
    assert tokyo.after is not None and tokyo.after.argv == ("/opt/jx/import.sh", "--from", "dc-tokyo")
    assert tokyo.after.timeout == 600 and tokyo.out == tmp_path / "in" / "dc-tokyo"
    assert isinstance(kaigo.schedule, Every) and kaigo.schedule.seconds == 300
    assert config.log_file == tmp_path / "logs" / "poll.log"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (DEPLOY / "bmrgw-poll.service").read_text()
    assert "ExecStart=/opt/bmrgw/.venv/bin/bmrgw poll --config /etc/bmrgw/poll.yaml" in unit
    bmrgw = Path(sys.executable).with_name("bmrgw")
    local = unit.replace("/opt/bmrgw/.venv/bin/bmrgw", str(bmrgw))
    (tmp_path / "bmrgw-poll.service").write_text(local)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "bmrgw-poll.service")],
                          capture_output=True, text=True, timeout=60)
    problems = [line for line in done.stderr.splitlines() if "bmrgw-poll.service" in line]
    assert done.returncode == 0 and not problems, done.stderr
