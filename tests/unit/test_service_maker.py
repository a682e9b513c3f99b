"""The plugins' service maker: SIGHUP ignored from the import of the plane's module on."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

from kcm.service_maker import PlaneServiceMaker


@pytest.fixture
def sighup_restored() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGHUP)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_both_plugins_are_plane_service_makers() -> None:
    import twisted.plugins

    found = {p.tapname: p for p in getPlugins(IServiceMaker, twisted.plugins)
             if p.tapname.startswith("kcm-")}
    assert set(found) == {"kcm-core", "kcm-gateway"}
    assert all(isinstance(p, PlaneServiceMaker) for p in found.values())


def test_sighup_is_ignored_once_the_module_is_asked_for(sighup_restored: None) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    maker = PlaneServiceMaker("kcm-core", "kcm.core.tap", "a plane", "kcm-core")
    from kcm.core.tap import Options
    assert maker.options is Options
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
