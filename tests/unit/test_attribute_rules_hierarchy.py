"""The dates a tenant or service key does not take (:mod:`kcm.core.attribute_rules`)."""

from __future__ import annotations

import pytest

from kcm.core.attribute_rules import check_hierarchy_date, level_takes
from kcm.core.store.schema import LEVEL_SERVICE_KEY, LEVEL_TENANT_KEY
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.tags import Tag

_REFUSED = (Tag.PROTECT_STOP_DATE, Tag.PROCESS_START_DATE)


@pytest.mark.parametrize("level", [LEVEL_TENANT_KEY, LEVEL_SERVICE_KEY])
@pytest.mark.parametrize("tag", _REFUSED)
def test_hierarchy_keys_refuse_protect_stop_and_process_start(level: int, tag: int) -> None:
    assert not level_takes(tag, level)
    with pytest.raises(KmipError) as refused:
        check_hierarchy_date(tag, level, (2, 1))
    assert refused.value.reason == ResultReason.ATTRIBUTE_READ_ONLY
    assert "not offered on a tenant or service key" in refused.value.message


@pytest.mark.parametrize("level", [None, LEVEL_TENANT_KEY, LEVEL_SERVICE_KEY])
def test_other_dates_and_ordinary_objects_pass(level: int | None) -> None:
    for tag in (Tag.ACTIVATION_DATE, Tag.DEACTIVATION_DATE, Tag.COMMENT):
        assert level_takes(tag, level)
        check_hierarchy_date(tag, level, (2, 1))
    for tag in _REFUSED:
        assert level_takes(tag, None)
