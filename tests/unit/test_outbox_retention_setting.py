"""``[core] outbox_retention``: how long the outbox keeps an event (kcm.core.outbox_retention),
checked like the other durations, and the state sweeper's step that applies it."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from kcm.config_file import ConfigError
from kcm.core import tap
from kcm.core.config import CoreConfig, load_config
from kcm.core.store import repository
from tests.vectors import REPO_ROOT


def test_the_default_is_seven_days_and_the_file_and_command_line_set_it(tmp_path: Path) -> None:
    assert CoreConfig().outbox_retention == 7 * 86_400
    assert load_config(REPO_ROOT / "etc" / "kcm-core.toml").outbox_retention == 7 * 86_400
    path = tmp_path / "core.toml"
    path.write_text("[core]\noutbox_retention = 3600\n")
    assert load_config(path).outbox_retention == 3600.0
    options = tap.Options()
    options.parseOptions(["-c", str(path), "--outbox-retention", "1.5"])
    assert options["core_config"].outbox_retention == 1.5


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", '"a week"', "true"])
def test_a_wrong_retention_is_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "core.toml"
    path.write_text(f"[core]\noutbox_retention = {value}\n")
    with pytest.raises(ConfigError, match=r"^core\.outbox_retention must be a positive "
                                          r"number of seconds"):
        load_config(path)
    with pytest.raises(usage.UsageError, match=r"core\.outbox_retention"):
        tap.Options().parseOptions(["--outbox-retention", value.strip('"')])


def test_the_state_sweeper_runs_the_step_with_the_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    options = tap.Options()
    options.parseOptions(["--outbox-retention", "60"])
    sweeper = tap.makeService(options, reactor=Clock()).getServiceNamed("kcm-state-sweeper")
    [step] = [s for s in sweeper._steps if s.__name__ == "prune_outbox"]
    asked: list[tuple[object, int, int]] = []
    monkeypatch.setattr(repository, "prune_outbox", lambda session, before, limit: (
        asked.append((session, before, limit)), (0, 0))[1])
    assert list(step("session", 1000.0)) == []
    assert asked == [("session", (1000 - 60) * 1_000_000, 10_000)]
