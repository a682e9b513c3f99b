"""``[core] destroyed_retention``: how long a destroyed object is kept before the state
sweeper deletes it (kcm.core.destroyed_retention); unset by default (kept for ever), else
checked like the other durations; the sweeper's steps that apply it, and that drop the L4
tombstones of destroyed service keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from kcm.config_file import ConfigError
from kcm.core import destroyed_retention, tap
from kcm.core.audit import AuditEvent
from kcm.core.config import CoreConfig, load_config
from kcm.core.store import repository
from tests.vectors import REPO_ROOT


def test_by_default_destroyed_objects_are_kept_for_ever(tmp_path: Path) -> None:
    assert CoreConfig().destroyed_retention is None
    assert load_config(REPO_ROOT / "etc" / "kcm-core.toml").destroyed_retention is None
    path = tmp_path / "core.toml"
    path.write_text("[core]\n")
    assert load_config(path).destroyed_retention is None
    options = tap.Options()
    options.parseOptions([])
    assert options["core_config"].destroyed_retention is None


def test_the_file_and_the_command_line_set_it(tmp_path: Path) -> None:
    path = tmp_path / "core.toml"
    path.write_text("[core]\ndestroyed_retention = 31536000\n")
    assert load_config(path).destroyed_retention == 31_536_000.0
    options = tap.Options()
    options.parseOptions(["-c", str(path), "--destroyed-retention", "1.5"])
    assert options["core_config"].destroyed_retention == 1.5
    options = tap.Options()
    options.parseOptions(["--destroyed-retention", "86400"])
    assert options["core_config"].destroyed_retention == 86_400.0


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", '"a week"', '"3600"', "true"])
def test_a_wrong_retention_is_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "core.toml"
    path.write_text(f"[core]\ndestroyed_retention = {value}\n")
    with pytest.raises(ConfigError, match=r"^core\.destroyed_retention must be a positive "
                                          r"number of seconds"):
        load_config(path)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "a week", "true", ""])
def test_a_wrong_retention_on_the_command_line_is_refused(value: str) -> None:
    with pytest.raises(usage.UsageError, match=r"core\.destroyed_retention"):
        tap.Options().parseOptions(["--destroyed-retention", value])


def _steps(arguments: list[str]) -> dict[str, object]:
    options = tap.Options()
    options.parseOptions(arguments)
    sweeper = tap.makeService(options, reactor=Clock()).getServiceNamed("kcm-state-sweeper")
    return {step.__name__: step for step in sweeper._steps}


def test_the_state_sweeper_purges_only_when_it_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = _steps([])
    assert "purge_destroyed" not in steps
    names = list(_steps(["--destroyed-retention", "60"]))
    # The tombstones of a destroyed L3 (whatever the setting) before the L3 itself.
    assert names[-2:] == ["drop_tombstones", "purge_destroyed"]
    asked: list[tuple[object, int, int]] = []
    monkeypatch.setattr(repository, "purge_destroyed", lambda session, before, limit: (
        asked.append((session, before, limit)), [])[1])
    assert list(_steps(["--destroyed-retention", "60"])["purge_destroyed"](
        "session", 1000.5)) == []
    assert asked == [("session", 1000 - 60, 1000)]
    assert "drop_tombstones" in steps


def test_the_step_audits_each_tenant_once_a_batch_and_reports_counts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    purged = [repository.PurgedObject("t1", "a", None, 1), repository.PurgedObject("t2", "b", 3, 2),
              repository.PurgedObject("t1", "c", None, 3)]
    monkeypatch.setattr(repository, "purge_destroyed", lambda session, before, limit: purged)
    audited: list[AuditEvent] = []
    monkeypatch.setattr(destroyed_retention, "append_audit",
                        lambda session, record, clock: audited.append(record))
    [done] = destroyed_retention.purge_destroyed("session", 86_400.0 + 100, retention=86_400,
                                                 limit=3)
    assert done == destroyed_retention.DestroyedPurged(3, 2, 100, more=True)
    assert str(done) == ("destroyed objects: 3 destroyed before 1970-01-01T00:01:40+00:00 "
                         "(destroyed_retention) deleted, of 2 tenants; sweeping again for more")
    assert [(r.tenant, r.object_ids, r.operation, r.principal) for r in audited] == [
        ("t1", ("a", "c"), "PurgeDestroyed", "kcm-core/state-sweeper"),
        ("t2", ("b",), "PurgeDestroyed", "kcm-core/state-sweeper")]
    assert audited[1].detail == {"objects": 1, "destroyed_before": 100, "retention": 86_400,
                                 "service_keys": 1}
