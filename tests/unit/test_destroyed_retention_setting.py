"""``[core] destroyed_retention``: how long a destroyed object is kept before the state
sweeper deletes it (kcm.core.destroyed_retention); unset by default (kept for ever), else
checked like the other durations."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from kcm.config_file import ConfigError
from kcm.core import tap
from kcm.core.config import CoreConfig, load_config
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
