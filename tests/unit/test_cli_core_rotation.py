"""``kcm core policy``, ``kcm core tenant policy|rotate``, ``kcm core service policy|show`` on
a real SQLite deployment (the commands of automatic rotation, docs/operations.md)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.unit.test_cli_core_inventory import deployment, json_lines, kcm  # noqa: F401


def test_policies_are_set_shown_inherited_and_cleared(deployment: Path, capsys) -> None:  # noqa: F811
    c = ("-c", str(deployment))
    status, out, _ = kcm(capsys, "core", "policy", "--interval", "90d", "--overlap", "1h", *c)
    assert status == 0 and "interval 90d (from the default policy)" in out
    kcm(capsys, "core", "tenant", "policy", "demo", "--max-uses", "1000",
        "--tenant-key-interval", "365d", *c)
    status, out, _ = kcm(capsys, "core", "service", "policy", "demo", "app", "--interval",
                         "30d", "--json", *c)
    shown = json.loads(out)
    assert shown["scope"] == "service demo/app"
    assert shown["set_here"]["interval"] == 30 * 86400
    effective = shown["effective"]
    assert (effective["interval"], effective["interval_from"]) == (2592000, "service demo/app")
    assert (effective["max_uses"], effective["max_uses_from"]) == (1000, "tenant demo")
    assert (effective["overlap"], effective["overlap_from"]) == (3600, "default")
    status, out, _ = kcm(capsys, "core", "service", "policy", "demo", "app", "--clear", *c)
    assert "nothing set here, all inherited" in out and "interval 90d" in out
    # Every change is audited, and the chain still verifies.
    status, out, _ = kcm(capsys, "audit", "tail", "-n", "4", *c)
    assert [r["operation"] for r in json_lines(out)] == ["SetRotationPolicy"] * 4
    assert kcm(capsys, "audit", "verify", *c)[0] == 0


def test_policy_commands_refuse_what_is_not_there(deployment: Path, capsys) -> None:  # noqa: F811
    c = ("-c", str(deployment))
    assert kcm(capsys, "core", "tenant", "policy", "nobody", "--interval", "1d", *c) == (
        2, "", "kcm core tenant policy: error: no tenant 'nobody'\n")
    status, _, err = kcm(capsys, "core", "service", "policy", "demo", "nope", "--interval",
                         "1d", *c)
    assert status == 2 and "has no service nope" in err
    status, _, err = kcm(capsys, "core", "policy", "--interval", "soon", *c)
    assert status == 2 and "not a duration" in err
    status, _, err = kcm(capsys, "core", "service", "policy", "demo", "app",
                         "--tenant-key-interval", "1d", *c)
    assert status == 2 and "tenant's (or the default) setting" in err


def test_service_show_lists_versions_states_ages_and_uses(deployment: Path, capsys) -> None:  # noqa: F811
    c = ("-c", str(deployment))
    status, out, _ = kcm(capsys, "core", "service", "show", "demo", "app", "--json", *c)
    shown = json.loads(out)
    assert [(v["version"], v["state"], v["current"], v["uses"]) for v in shown["versions"]] \
        == [(2, "ACTIVE", True, 0), (1, "ACTIVE", False, 0)]
    assert all(v["age"] >= 0 for v in shown["versions"])
    status, out, _ = kcm(capsys, "core", "service", "show", "demo", "app", *c)
    assert out.startswith("service demo/app\n  version 2  l3-") and "current" in out
    assert kcm(capsys, "core", "service", "show", "demo", "nope", *c)[0] == 2


def test_tenant_rotate_then_show_counts_what_each_tenant_key_wraps(deployment: Path,  # noqa: F811
                                                                   capsys) -> None:
    c = ("-c", str(deployment))
    status, out, _ = kcm(capsys, "core", "tenant", "rotate", "demo", *c)
    assert status == 0 and "deactivated" in out
    status, out, _ = kcm(capsys, "core", "tenant", "show", "demo", "--json", *c)
    keys = json.loads(out)["tenant_keys"]
    assert [(k["state"], k["wraps"]) for k in keys] == [("DEACTIVATED", 2), ("ACTIVE", 0)]
    assert kcm(capsys, "core", "tenant", "rotate", "nobody", *c)[0] == 2
    # Removing a tenant takes its policies and usage counts with it.
    kcm(capsys, "core", "tenant", "policy", "other", "--interval", "1d", *c)
    assert kcm(capsys, "core", "tenant", "remove", "other", "--yes", *c)[0] == 0
    with sqlite3.connect(deployment.parent / "kcm.db") as db:
        assert db.execute("SELECT count(*) FROM rotation_policies").fetchone() == (0,)
    assert kcm(capsys, "audit", "verify", *c)[0] == 0


def test_policy_durations_caps_and_managed_interval_are_bounded(deployment: Path,  # noqa: F811
                                                                 capsys) -> None:
    """More than 100 years, a usage cap beyond 2**32 (or not a whole number), and a
    managed keys' Rotate Interval below the core's limits.min_rotate_interval are refused
    with one short line, and nothing is stored."""
    c = ("-c", str(deployment))
    for args, error in (
            (("--overlap", "9223372036854775700"), "a duration is at most 100 years"),
            (("--interval", "36501d"), "a duration is at most 100 years"),
            (("--max-uses", "100000000000000000000"), "--max-uses is at most 2**32 "
             "(AES-GCM with random IVs allows at most 2**32 encryptions under one key)"),
            (("--max-uses", str(2**32 + 1)), "--max-uses is at most 2**32 (AES-GCM"),
            (("--max-uses", str(2**62)), "--max-uses is at most 2**32 (AES-GCM"),
            (("--max-uses", "1e20"), "--max-uses takes a whole number, not '1e20'"),
            (("--managed-interval", "59m"),
             "--managed-interval must be at least the core's limits.min_rotate_interval "
             "(3600 s)")):
        status, out, err = kcm(capsys, "core", "policy", *args, *c)
        assert (status, out) == (2, ""), args
        assert err.startswith("kcm core policy: error: ") and error.replace(
            "2**32 ", f"{2**32} ", 1) in err and err.count("\n") == 1 and err.isascii(), err
    status, out, _ = kcm(capsys, "core", "policy", "--overlap", "36500d", "--max-uses",
                         str(2**32), "--managed-interval", "1h", "--json", *c)
    assert status == 0
    assert json.loads(out)["set_here"] == {
        "interval": None, "max_uses": 2**32, "overlap": 3153600000,
        "managed_interval": 3600, "tenant_key_interval": None}


def test_show_names_the_built_in_cap_when_no_policy_sets_one(deployment: Path,  # noqa: F811
                                                              capsys) -> None:
    """No policy, or a cap of 0: the effective cap is the built-in 2**31, named
    ``built-in``; a cap set explicitly names its scope again."""
    c = ("-c", str(deployment))
    status, out, _ = kcm(capsys, "core", "service", "show", "demo", "app", "--json", *c)
    effective = json.loads(out)["policy"]["effective"]
    assert (effective["max_uses"], effective["max_uses_from"]) == (2**31, "built-in")
    status, out, _ = kcm(capsys, "core", "service", "show", "demo", "app", *c)
    assert "  max uses 2147483648 (the built-in cap)\n" in out
    status, out, _ = kcm(capsys, "core", "tenant", "policy", "demo", "--max-uses", "1000",
                         *c)
    assert "  max uses 1000 (from the tenant demo policy)\n" in out
    status, out, _ = kcm(capsys, "core", "service", "policy", "demo", "app", "--max-uses",
                         "0", "--json", *c)
    shown = json.loads(out)
    assert shown["set_here"]["max_uses"] == 0
    assert (shown["effective"]["max_uses"], shown["effective"]["max_uses_from"]) == (
        2**31, "built-in")
