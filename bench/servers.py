"""The servers under test: a backend and the two proxies put in front of it.

A :class:`Stack` is one backend (of a kind, with a given answer delay) plus
nginx and the gateway pointing at it.  The kinds (:data:`BACKENDS`): ``nginx``
answering fixed EchoResponses and ``echo`` (aiohttp's low-level server), both
cheap enough that the proxy, not the backend, is the limit; and ``demo``, the
gateway's own demo service, a realistic backend that parses every envelope
(see :mod:`bench.echo`).  The three targets of a scenario are the backend
itself ("direct"), nginx and bmrgw, and they all reach the same backend
process, so differences between them are the proxies' alone.
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from .echo import echo_answer, nginx_echo_conf
from .envelope import DESTINATION, make_envelope
from .procs import LOOPBACK, BenchError, Server, free_port, nginx_head, start_server

__all__ = ["start_echo_backend", "start_nginx_backend", "start_nginx_proxy", "BACKENDS", "DEMO_PATH", "ECHO_SIZES", "TARGETS", "Stack", "Target", "Tools", "start_stack", "launch_gateway", "gateway_conf"]

#: The targets in the order they are measured and reported.
TARGETS = ("direct", "nginx", "bmrgw", "bmrgw-nolog")
_READY_TIMEOUT = 30.0
DEMO_PATH = "/demo"
#: The backends a scenario can run against.
BACKENDS = ("nginx", "echo", "demo")
#: Envelope sizes the nginx backend has answers for (the relay scenarios' sizes).
ECHO_SIZES = (1024, 100 * 1024)


@dataclass(frozen=True, kw_only=True)
class Tools:
    """The programs the benchmark runs, found once up front."""

    bmrgw: Path
    nginx: Path
    wrk: Path

    @classmethod
    def find(cls, *, bmrgw: Path | None = None) -> Tools:
        """Locate the tools, preferring the virtual environment's own ``bmrgw``."""
        venv_bmrgw = Path(sys.executable).with_name("bmrgw")
        return cls(
            bmrgw=bmrgw or (venv_bmrgw if venv_bmrgw.exists() else _which("bmrgw")),
            nginx=_which("nginx", "/usr/sbin/nginx"),
            wrk=_which("wrk"),
        )


def _which(name: str, fallback: str | None = None) -> Path:
    found = shutil.which(name) or (fallback if fallback and os.access(fallback, os.X_OK) else None)
    if not found:
        raise BenchError(f"{name} not found; install it (CI does: apt-get install nginx-light wrk)")
    return Path(found)


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where one target takes the load, and the proxy process whose CPU time is its cost."""

    name: str
    url: str
    proxy: Server | None = None


@dataclass(kw_only=True)
class Stack:
    """A backend with its answer delay and the targets in front of it."""

    delay: float
    backend: Server
    kind: str = "demo"
    targets: dict[str, Target] = field(default_factory=dict)
    backend_url: str = ""


def start_stack(tools: Tools, workdir: Path, *, delay: float, targets: tuple[str, ...],
                exits: ExitStack, kind: str = "demo") -> Stack:
    """Start the backend of ``kind``, then the proxies of ``targets``; ``exits`` stops them all."""
    starter = {"demo": _start_backend, "nginx": start_nginx_backend, "echo": start_echo_backend}[kind]
    backend, backend_url = starter(tools, workdir, delay, exits)
    stack = Stack(delay=delay, backend=backend, backend_url=backend_url, kind=kind)
    starters = {"direct": lambda: Target(name="direct", url=backend_url),
                "nginx": lambda: _start_nginx(tools, workdir, backend_url, exits),
                "bmrgw": lambda: _start_gateway(tools, workdir, backend_url, exits, log=True),
                "bmrgw-nolog": lambda: _start_gateway(tools, workdir, backend_url, exits, log=False)}
    for name in targets:
        stack.targets[name] = starters[name]()
    return stack


def _launch(name: str, argv: list[str | os.PathLike[str]], log: Path, ready_url: str,
            exits: ExitStack) -> Server:
    server = start_server(name, argv, log=log)
    exits.callback(server.stop)
    server.wait_ready(ready_url, timeout=_READY_TIMEOUT)
    return server


def _start_backend(tools: Tools, workdir: Path, delay: float, exits: ExitStack) -> tuple[Server, str]:
    port = free_port()
    argv: list[str | os.PathLike[str]] = [tools.bmrgw, "demo-backend", "--host", LOOPBACK,
                                          "--port", str(port), "--delay", f"{delay:g}"]
    url = f"http://{LOOPBACK}:{port}{DEMO_PATH}"
    server = _launch(f"demo backend ({delay * 1000:g} ms)", argv, workdir / f"backend-{port}.log",
                     f"{url}?wsdl", exits)
    return server, url


def start_nginx_backend(tools: Tools, workdir: Path, delay: float, exits: ExitStack, *,
                        cpus: str | None = None) -> tuple[Server, str]:
    """nginx answering the EchoResponse of each envelope size in :data:`ECHO_SIZES` (no delay),
    pinned to ``cpus`` (``taskset -c``) when given."""
    if delay:
        raise BenchError("the nginx backend cannot wait before answering; use the echo backend")
    port = free_port()
    prefix = workdir / f"nginx-backend-{port}"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    answers = {size: echo_answer(make_envelope(size).body) for size in ECHO_SIZES}
    conf.write_text(nginx_echo_conf(prefix, port=port, answers=answers, listen=LOOPBACK))
    pin: list[str | os.PathLike[str]] = ["taskset", "-c", cpus] if cpus else []
    argv: list[str | os.PathLike[str]] = [*pin, tools.nginx, "-p", prefix, "-c", conf, "-e", prefix / "error.log"]
    url = f"http://{LOOPBACK}:{port}{DEMO_PATH}"
    return _launch("nginx backend", argv, prefix / "stdout.log", f"{url}?wsdl", exits), url


def start_echo_backend(tools: Tools, workdir: Path, delay: float, exits: ExitStack, *,
                       digest: bool = False) -> tuple[Server, str]:
    """aiohttp's low-level server echoing any Echo envelope after ``delay`` seconds
    (``digest``: answering the body's length and SHA-256 instead)."""
    port = free_port()
    argv: list[str | os.PathLike[str]] = [sys.executable, "-m", "bench.echo", "--host", LOOPBACK,
                                          "--port", str(port), "--delay", f"{delay:g}"]
    if digest:
        argv.append("--digest")
    url = f"http://{LOOPBACK}:{port}{DEMO_PATH}"
    name = f"echo backend ({delay * 1000:g} ms{', digest' if digest else ''})"
    return _launch(name, argv, workdir / f"echo-{port}.log", f"{url}?wsdl", exits), url


def _start_nginx(tools: Tools, workdir: Path, backend_url: str, exits: ExitStack) -> Target:
    return start_nginx_proxy(tools, workdir, backend_url, exits)


def start_nginx_proxy(tools: Tools, workdir: Path, backend_url: str, exits: ExitStack, *,
                      upload: bool = False) -> Target:
    """nginx as a pass-through proxy to ``backend_url`` (``upload``: bodies of any size, streamed)."""
    port = free_port()
    prefix = workdir / f"nginx-{port}"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, port=port, upstream=backend_url.split("/")[2], upload=upload))
    argv: list[str | os.PathLike[str]] = [tools.nginx, "-p", prefix, "-c", conf, "-e", prefix / "error.log"]
    url = f"http://{LOOPBACK}:{port}{DEMO_PATH}"
    server = _launch("nginx", argv, prefix / "stdout.log", f"{url}?wsdl", exits)
    return Target(name="nginx", url=url, proxy=server)


def nginx_conf(prefix: Path, *, port: int, upstream: str, upload: bool = False) -> str:
    """A pass-through reverse proxy as an operator would set it up: keep-alive to the
    upstream, no access log, and buffers big enough that 100 KiB bodies stay in memory
    (nginx's defaults would spool them to temp files, which measures the disk).
    ``upload`` streams bodies of any size straight to the upstream (file benchmark)."""
    body_limit = "0;\n    proxy_request_buffering off" if upload else "2m"
    return nginx_head(prefix, "servers.py") + f"""    client_max_body_size {body_limit};
    client_body_buffer_size 256k;
    proxy_buffer_size 16k;
    proxy_buffers 16 16k;
    proxy_max_temp_file_size 0;
    keepalive_requests 1000000;
    upstream backend {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen {LOOPBACK}:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def _start_gateway(tools: Tools, workdir: Path, backend_url: str, exits: ExitStack, *, log: bool) -> Target:
    port = free_port()
    data = workdir / f"bmrgw-{port}"
    data.mkdir()
    # The send/receive log (the store) is on for "bmrgw", as deployed; "bmrgw-nolog"
    # turns it off only to show what the log costs, measured side by side.
    return launch_gateway(tools, data, port=port, name="bmrgw" if log else "bmrgw-nolog",
                          config=gateway_conf(data, port=port, backend_url=backend_url, log=log), exits=exits)


def launch_gateway(tools: Tools, data: Path, *, port: int, name: str, config: str, exits: ExitStack) -> Target:
    """``bmrgw serve`` with the endpoints.yaml text ``config`` in ``data``, listening on ``port``."""
    path = data / "endpoints.yaml"
    path.write_text(config)
    # WARNING keeps per-request log lines off, as access_log is off for nginx.
    argv: list[str | os.PathLike[str]] = [tools.bmrgw, "serve", "--config", path, "--port", str(port),
                                          "--log-level", "WARNING"]
    base = f"http://{LOOPBACK}:{port}"
    server = _launch(f"{name} serve", argv, data / "gateway.log", f"{base}/healthz", exits)
    return Target(name=name, url=f"{base}/soap", proxy=server)


def gateway_conf(data: Path, *, port: int, backend_url: str, log: bool = True) -> str:
    """The smallest gateway configuration routing the benchmark's destination to the backend."""
    return f"""# Generated by bench/servers.py for one benchmark run.
gateway:
  name: bench-gw
  listen: {{host: {LOOPBACK}, port: {port}}}
  db: "sqlite:///{data}/bmrgw.db"
  data_dir: "{data}"
  logs: {{enabled: {"true" if log else "false"}}}
endpoints:
  {DESTINATION}: {{url: "{backend_url}", timeout: 30}}
"""
