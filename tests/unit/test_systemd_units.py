"""The systemd units in etc/systemd: each starts an existing twistd plugin in the foreground,
with options that plugin has and a configuration file, as a dedicated user, sandboxed."""

from __future__ import annotations

import configparser
import importlib.util
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = {"kcm-core": ROOT / "etc" / "systemd" / "kcm-core.service",
         "kcm-gateway": ROOT / "etc" / "systemd" / "kcm-gateway.service"}

SANDBOXING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "LockPersonality": "yes", "CapabilityBoundingSet": "",
    "SystemCallFilter": "@system-service",
}


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None,
                                     delimiters=("=",), comment_prefixes=("#", ";"))
    unit.optionxform = str  # systemd's keys are case-sensitive
    unit.read_string(path.read_text())
    return unit


def plugin_makers() -> dict[str, object]:
    """tapname -> ServiceMaker of every plugin module in twisted/plugins."""
    makers = {}
    for module_path in (ROOT / "twisted" / "plugins").glob("kcm_*.py"):
        spec = importlib.util.spec_from_file_location(f"_unit_{module_path.stem}", module_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for value in vars(module).values():
            if hasattr(value, "tapname") and hasattr(value, "module"):
                makers[value.tapname] = value
    return makers


@pytest.mark.parametrize("name", sorted(UNITS))
def test_exec_start_runs_the_plugin_with_a_config_file(name: str) -> None:
    unit = read_unit(UNITS[name])
    service = unit["Service"]
    assert service["Type"] == "simple"
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "twistd" and Path(argv[0]).is_absolute()
    # twistd's own options: in the foreground, without a pid file (systemd tracks the pid).
    assert "-n" in argv[1:argv.index(name)] and "--pidfile=" in argv[1:argv.index(name)]
    maker = plugin_makers()[name]
    plugin_args = argv[argv.index(name) + 1:]
    config = plugin_args[plugin_args.index("-c") + 1]
    assert Path(config).is_absolute() and config.endswith(".toml")
    # Every option given is one the plugin has.
    options = importlib.import_module(maker.module).Options()
    known = {f"--{p[0]}" for p in options.optParameters} | {
        f"-{p[1]}" for p in options.optParameters if p[1]}
    given = [a.split("=", 1)[0] for a in plugin_args if a.startswith("-")]
    assert set(given) <= known, set(given) - known


@pytest.mark.parametrize("name", sorted(UNITS))
def test_runs_as_kcm_sandboxed(name: str) -> None:
    service = read_unit(UNITS[name])["Service"]
    assert service["User"] == service["Group"] == "kcm"
    assert service["Restart"] == "on-failure"
    assert int(service["LimitNOFILE"]) >= 1024
    for key, value in SANDBOXING.items():
        assert service.get(key) == value, key
    # pyOpenSSL's cffi callbacks need W+X memory: with W^X enforced the services stop at
    # start (docs/operations.md, "Running under systemd").
    assert service["MemoryDenyWriteExecute"] == "no"


def test_core_state_directory_and_reload() -> None:
    service = read_unit(UNITS["kcm-core"])["Service"]
    assert service["StateDirectory"] == "kcm"
    assert service["StateDirectoryMode"] == "0700"  # kcm core init refuses an open directory
    assert "/var/lib/kcm" in service["ReadWritePaths"].split()
    # kcm-core reloads its policy file and looks at its TLS files on SIGHUP.
    assert "-HUP" in service["ExecReload"] and "$MAINPID" in service["ExecReload"]


def test_gateway_reload_signals_the_main_process_only() -> None:
    # With workers, SIGHUP to the supervisor alone restarts the workers one at a time; a
    # single gateway process looks at its TLS files (kcm.gateway.supervisor.SighupIgnored).
    service = read_unit(UNITS["kcm-gateway"])["Service"]
    assert "-HUP" in service["ExecReload"] and "$MAINPID" in service["ExecReload"]
    assert service["KillMode"] == "mixed"  # the supervisor stops its workers itself


@pytest.mark.parametrize("name", sorted(UNITS))
def test_a_directive_left_commented_out_is_one_once_uncommented(name: str) -> None:
    """The docs say to uncomment ``After=postgresql.service``: the line read ``# With
    PostgreSQL on this host: After=postgresql.service``, which uncommented is a key systemd
    ignores with a warning. A commented-out directive is ``#Key=value`` alone, its words on
    the lines above."""
    import re

    lines = UNITS[name].read_text().splitlines()
    for line in lines:
        assert not re.match(r"#.*[a-z]: [A-Z][A-Za-z]+=", line), line
    assert ("#After=postgresql.service" if name == "kcm-core"
            else "#After=kcm-core.service") in lines
