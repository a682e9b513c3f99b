"""``kcm dev run``: kcm-core and kcm-gateway together on this machine, for development (what
``make run`` runs).

It refuses to start, saying why, when a kcm-core or kcm-gateway it recorded (``var/*.pid``)
is still alive or when one of its ports is taken, and then touches nothing: the running
instance's log and pid files stay as they are. Otherwise it makes a development PKI
(``var/pki``) if there is none, initialises the database, makes sure tenant ``demo`` has a
service ``app``, starts kcm-core (its log appended to ``var/kcm-core.log``) and kcm-gateway
(its log on this terminal), records their pids, and prints commands that can be pasted as
they are. SIGINT (Ctrl-C) or SIGTERM stops both and exits 0; when either service exits on
its own, the other is stopped and the reason printed (exit status 1).

Paths are those of the configuration files (``etc/kcm-core.toml``, ``etc/kcm-gateway.toml``),
relative to the working directory; the ports given here override theirs.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kcm.cli import CommandError, add_command

#: Seconds a service may take to listen, and to stop once asked.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def register(subparsers: argparse._SubParsersAction) -> None:
    actions = add_command(subparsers, "dev", "run KCM on this machine for development", __doc__)
    run = actions.add_parser("run", help="kcm-core and kcm-gateway together (make run)",
                             description=__doc__.split("\n\n")[1])
    run.add_argument("--core-config", default="etc/kcm-core.toml", metavar="FILE",
                     help="kcm-core's configuration (default: etc/kcm-core.toml)")
    run.add_argument("--gateway-config", default="etc/kcm-gateway.toml", metavar="FILE",
                     help="kcm-gateway's configuration (default: etc/kcm-gateway.toml)")
    run.add_argument("--kmip-port", type=int, default=5696, help="kcm-core's KMIP port "
                     "(default: 5696)")
    run.add_argument("--link-port", type=int, default=5697, help="kcm-core's gateway link "
                     "port (default: 5697)")
    run.add_argument("--gateway-port", type=int, default=5698, help="kcm-gateway's KMIP port "
                     "(default: 5698)")
    run.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                     help="serve /metrics, /healthz and /readyz over HTTP: kcm-core's on "
                     "127.0.0.1:PORT, kcm-gateway's on PORT+1 (default: 0, none)")
    run.add_argument("--log-format", choices=("text", "json"), default="text",
                     help="both services' log format (default: text)")
    run.add_argument("--tenant", default="demo", help="the tenant to provision (demo)")
    run.add_argument("--service", default="app", help="its service to provision (app)")
    run.set_defaults(run=_run, prog="kcm dev run")


@dataclass
class Service:
    """One service the launcher runs: how to start it, where it records its pid."""

    name: str
    command: list[str]
    ports: list[tuple[int, str]]
    pid_file: Path
    log: Path | None  # None: this terminal
    process: subprocess.Popen | None = None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def recorded_pid(pid_file: Path, name: str) -> int | None:
    """The pid in ``pid_file`` if that process is alive and (where /proc tells) is ``name``
    (a pid the system has given to another program since is not an instance), else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 0 or not pid_alive(pid):
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc: the pid alone decides
    return pid if name.encode() in command else None


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on (or holds) ``host:port``."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def refusals(services: list[Service]) -> list[str]:
    """Why these services cannot start now (empty: they can)."""
    found = []
    for service in services:
        pid = recorded_pid(service.pid_file, service.name)
        if pid is not None:
            found.append(f"{service.name} already runs (pid {pid}, recorded in "
                         f"{service.pid_file}); stop it first (Ctrl-C where it runs, or "
                         f"kill {pid})")
    for service in services:
        for port, what in service.ports:
            if port_taken(port):
                found.append(f"port {port} ({what}) is in use by another process; stop it "
                             "or choose other ports (kcm dev run --help)")
    return found


def _bin(name: str) -> str:
    """A program of this Python's environment (the virtualenv's ``bin``)."""
    return str(Path(sys.executable).parent / name)


def _env() -> dict[str, str]:
    """The services' environment: twistd finds the kcm plugins in the checkout's
    ``twisted/plugins`` when kcm is not installed with them (an editable install)."""
    import kcm

    root = str(Path(kcm.__file__).resolve().parents[1])
    env = dict(os.environ)
    if (Path(root) / "twisted" / "plugins").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _without_l1(env: dict[str, str], core_config: str) -> dict[str, str]:
    """``env`` without the variable that holds kcm-core's L1 (its ``l1_key_env``): the
    gateway needs no L1, and was given it (its workers too) with the rest of the
    environment."""
    from kcm.core.config import load_config

    name = load_config(core_config).l1_key_env
    return {key: value for key, value in env.items() if key != name}


def _start(service: Service, env: dict[str, str]) -> None:
    output = open(service.log, "ab") if service.log else None  # noqa: SIM115 - the child's
    try:
        service.process = subprocess.Popen(
            service.command, env=env, stdout=output, stderr=subprocess.STDOUT if output else None,
            # Its own session: a Ctrl-C reaches the launcher alone, which stops both in order.
            start_new_session=True)
    finally:
        if output is not None:
            output.close()
    service.pid_file.write_text(f"{service.process.pid}\n")


def _wait_listening(service: Service, stopping: list[int]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    assert service.process is not None
    while time.monotonic() < deadline and not stopping:
        if service.process.poll() is not None:
            raise _Exited(service)
        try:
            for port, _ in service.ports:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    if not stopping:
        raise CommandError(f"{service.name} did not listen within {START_TIMEOUT:g}s")


class _Exited(Exception):
    def __init__(self, service: Service) -> None:
        self.service = service


def _stop(service: Service) -> None:
    process = service.process
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # Only a pid file this launcher wrote, still naming its own child, is removed.
    if process is not None:
        with contextlib.suppress(OSError, ValueError):
            if int(service.pid_file.read_text().strip()) == process.pid:
                service.pid_file.unlink()


def _tail(log: Path | None, lines: int = 20) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def start_failure(log: Path | None) -> str | None:
    """Why a service in ``log`` did not start, one line: its critical "did not start" event
    (the text of a JSON line), else twistd's refusal of its configuration (the line after
    "See twistd ... --help"); None if the log has neither."""
    if log is None or not log.exists():
        return None
    lines = log.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if " did not start: " not in line:
            continue
        if line.startswith("{"):
            with contextlib.suppress(ValueError, AttributeError):
                return str(json.loads(line).get("text") or line)
        _, bracket, text = line.partition("] ")  # after the text format's time [namespace]
        return text if bracket and " did not start: " in text else line
    for before, line in itertools.pairwise(lines):
        if before.startswith("See twistd "):
            return line
    return None


def _exit_reason(process: subprocess.Popen) -> str:
    code = process.returncode
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def banner(args: argparse.Namespace, var: Path) -> str:
    """What to paste: one command a line, absolute paths, the environment's programs."""
    pki = (var / "pki").resolve()
    kcm = _bin("kcm")
    pykmip = (
        f"{_bin('python')} -c 'from kmip.pie.client import ProxyKmipClient as C; "
        f"from kmip import enums; c = C(hostname=\"127.0.0.1\", port={args.gateway_port}, "
        f"cert=\"{pki / 'app.pem'}\", key=\"{pki / 'app.key'}\", ca=\"{pki / 'ca.pem'}\", "
        "config_file=\"/dev/null\"); c.open(); "
        "print(c.create(enums.CryptographicAlgorithm.AES, 256))'")
    return "\n".join([
        "",
        f"kcm-gateway: KMIP over mutual TLS on 127.0.0.1:{args.gateway_port} (kcm-core behind "
        f"it on {args.kmip_port}, link {args.link_port}).",
        f"As the application {args.tenant}/{args.service}, with kcm (kcm --help):",
        f"  export KCM_SERVER=127.0.0.1:{args.gateway_port} KCM_CERT={pki / 'app.pem'} "
        f"KCM_KEY={pki / 'app.key'} KCM_CA={pki / 'ca.pem'}",
        f"  token=$({kcm} l4 create) && echo 'a record' | {kcm} key encrypt \"$token\" --json",
        f"  {kcm} key create --name my-first-key",
        "A managed key (stored by the core), with PyKMIP:",
        f"  {pykmip}",
        *_metrics_lines(args),
        f"kcm-core's log: {(var / 'kcm-core.log').resolve()}. Ctrl-C stops both.",
        "",
    ])


def _metrics_lines(args: argparse.Namespace) -> list[str]:
    port = args.metrics_port
    if not port:
        return ["Metrics and health checks: kcm dev run --metrics-port 9696 "
                "(make run RUN_ARGS=--metrics-port=9696)."]
    return ["Metrics and health checks (HTTP; kcm-gateway's on the next port):",
            f"  curl -s http://127.0.0.1:{port}/metrics; "
            f"curl -s http://127.0.0.1:{port}/readyz; "
            f"curl -s http://127.0.0.1:{port + 1}/readyz"]


def _run(args: argparse.Namespace) -> int:
    var = Path("var")  # where the configurations in etc/ keep their files, too
    core_config = os.path.abspath(args.core_config)
    gateway_config = os.path.abspath(args.gateway_config)
    for config in (core_config, gateway_config):
        if not os.path.isfile(config):
            raise CommandError(f"no configuration file {config}")
    listen = "tcp:{}:interface=127.0.0.1"
    core = Service(
        "kcm-core",
        [_bin("twistd"), "-n", "--pidfile=", "kcm-core", "-c", core_config,
         "--listen", listen.format(args.kmip_port),
         "--link-listen", listen.format(args.link_port), "--log-format", args.log_format,
         "--log-file", "-"],
        [(args.kmip_port, "kcm-core KMIP"), (args.link_port, "kcm-core gateway link")],
        var / "kcm-core.pid", var / "kcm-core.log")
    gateway = Service(
        "kcm-gateway",
        [_bin("twistd"), "-n", "--pidfile=", "kcm-gateway", "-c", gateway_config,
         "--listen", listen.format(args.gateway_port),
         "--core", f"tcp:127.0.0.1:{args.link_port}", "--log-format", args.log_format,
         "--log-file", "-", "--prewarm", f"{args.tenant}/{args.service}"],
        [(args.gateway_port, "kcm-gateway KMIP")], var / "kcm-gateway.pid", None)
    if args.metrics_port:
        taken = {args.kmip_port, args.link_port, args.gateway_port}
        if not 1 <= args.metrics_port < 65535 or {args.metrics_port,
                                                    args.metrics_port + 1} & taken:
            raise CommandError("--metrics-port PORT takes PORT and PORT+1, from 1 to 65535, "
                               "apart from the KMIP and link ports")
        for service, port in ((core, args.metrics_port), (gateway, args.metrics_port + 1)):
            service.command += ["--metrics-listen", listen.format(port)]
            service.ports.append((port, f"{service.name} metrics"))
    services = [core, gateway]
    problems = refusals(services)
    if problems:
        raise CommandError("; ".join(problems))

    _private(var)
    _prepare(args, var, core_config)

    stop_signal: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stop_signal.append(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM,
                                                          signal.SIGHUP)}
    env = _env()
    started: list[Service] = []
    try:
        for service in services:
            if stop_signal:
                break
            _start(service, env if service is core else _without_l1(env, core_config))
            started.append(service)
            _wait_listening(service, stop_signal)
        if not stop_signal:
            print(banner(args, var), flush=True)
        while not stop_signal:
            for service in services:
                if service.process is not None and service.process.poll() is not None:
                    raise _Exited(service)
            time.sleep(0.2)
        name = signal.Signals(stop_signal[0]).name
        print(f"kcm dev run: {name}: stopping kcm-gateway and kcm-core", file=sys.stderr)
        return 0
    except _Exited as e:
        dead = e.service
        others = [s.name for s in started if s is not dead]
        print(f"kcm dev run: {dead.name} exited ({_exit_reason(dead.process)})"
              + (f"; stopping {', '.join(others)}" if others else ""), file=sys.stderr)
        reason = start_failure(dead.log)
        if reason:
            print(f"kcm dev run: {reason}", file=sys.stderr)
        tail = _tail(dead.log)
        if tail:
            print(f"--- the end of {dead.log}:\n{tail}", file=sys.stderr)
        return 1
    finally:
        for service in reversed(started):
            _stop(service)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _application_of(certificate: Path) -> str | None:
    """The path of the SPIFFE ID in ``certificate`` (``/tenant/T/service/S``), or None."""
    from kcm.pki import certificate_spiffe_id

    spiffe_id = certificate_spiffe_id(certificate)
    if spiffe_id is None:
        return None
    return "/" + spiffe_id.removeprefix("spiffe://").partition("/")[2]


def _private(var: Path) -> None:
    var.mkdir(mode=0o700, parents=True, exist_ok=True)


def _prepare(args: argparse.Namespace, var: Path, core_config: str) -> None:
    """A development PKI if there is none; the database and L1; the tenant and service."""
    from kcm.cli import main

    made = (var / "pki" / "ca.pem").exists() or main(
        ["pki", "init", str(var / "pki"), "--tenant", args.tenant,
         "--service", args.service]) == 0
    if not made:
        raise CommandError("could not make the development PKI")
    named = _application_of(var / "pki" / "app.pem")
    if named is not None and named != f"/tenant/{args.tenant}/service/{args.service}":
        # (the banner's commands use app.pem: they would act as another application)
        raise CommandError(f"{var / 'pki'} was made for the application {named}; give its "
                           f"--tenant and --service, or remove {var} for a new development "
                           f"deployment")
    for argv in (["core", "init"], ["core", "bootstrap", args.tenant, args.service]):
        if main([*argv, "-c", core_config]) != 0:
            raise CommandError(f"kcm {' '.join(argv)} failed (see above)")
