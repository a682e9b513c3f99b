"""The gateways' scopes in the core's policy file (:mod:`kcm.core.gateway_scopes`): how the
``[gateways]`` table is read and checked, whom a scope allows, and how the core's
:class:`~kcm.core.service.PolicyFile` puts them in force at start and on a reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from kcm.core.gateway_scopes import GatewayScope, GatewayScopes
from kcm.core.service import PolicyFile
from kcm.identity import Principal, parse_principal_path
from tests.thread_fakes import HeldThreads

TD = "kcm.test"


def _p(path: str) -> Principal:
    principal = parse_principal_path(path, trust_domain=TD, uri=f"spiffe://{TD}/{path}")
    assert principal is not None
    return principal


GW1, GW2 = _p("gateway/gw1"), _p("gateway/gw2")


def test_a_scope_allows_its_tenants_applications_and_admins_only_if_it_says_so() -> None:
    scopes = GatewayScopes.from_mapping({
        "gateway/gw1": {"tenants": ["demo", "acme"]},
        "gateway/gw2": {"tenants": "*", "admins": True}})
    gw1, gw2 = scopes.scope_of(GW1), scopes.scope_of(GW2)
    assert gw1 == GatewayScope(frozenset({"demo", "acme"}), admins=False)
    assert gw1.allows(_p("tenant/demo/service/app")) and gw1.allows(_p("tenant/acme/service/x"))
    assert not gw1.allows(_p("tenant/other/service/app"))
    assert not gw1.allows(_p("tenant/demo/admin/alice"))  # admins default to false
    assert not gw1.allows(_p("operator/ops"))  # a scoped gateway never asserts an operator
    # No tenant named (a fetch that names none) is no tenant's, whatever the scope.
    assert not gw1.allows_tenant(None)
    assert not GatewayScope(None, admins=True).allows_tenant(None)
    assert gw2 is not None and gw2.tenants is None
    assert gw2.allows(_p("tenant/other/admin/alice")) and gw2.allows(_p("tenant/x/service/y"))
    assert not gw2.allows(_p("operator/ops")) and not gw2.allows(_p("gateway/gw3"))
    assert scopes.scope_of(_p("gateway/gw3")) is None  # not listed: unscoped
    assert gw1.describe() == "tenants acme, demo" and gw2.describe() == "every tenant; admins"


def test_the_default_entry_scopes_every_gateway_not_listed() -> None:
    scopes = GatewayScopes.from_mapping({"gateway/gw1": {"tenants": ["demo"]},
                                         "*": {"tenants": []}})
    assert scopes.has_default
    gw3 = scopes.scope_of(_p("gateway/gw3"))
    assert gw3 == GatewayScope(frozenset()) and not gw3.allows(_p("tenant/demo/service/app"))
    assert scopes.scope_of(GW1) == GatewayScope(frozenset({"demo"}))
    assert len(GatewayScopes.from_mapping({})) == 0


@pytest.mark.parametrize(("table", "error"), [
    ([], "[gateways] must be a table"),
    ({"gw1": {"tenants": []}}, "role path 'gateway/NAME'"),
    ({"spiffe://kcm.test/gateway/gw1": {"tenants": []}}, "role path"),
    ({"tenant/demo/service/app": {"tenants": []}}, "role path"),
    ({"gateway/bad name": {"tenants": []}}, "role path"),
    ({"gateway/gw1": ["demo"]}, "must be a table"),
    ({"gateway/gw1": {}}, "'tenants' is required"),
    ({"gateway/gw1": {"tenants": "demo"}}, "must be a list of tenant names, or '*'"),
    ({"gateway/gw1": {"tenants": ["demo", "a/b"]}}, "'a/b' is not a tenant name"),
    ({"gateway/gw1": {"tenants": [".."]}}, "'..' is not a tenant name"),
    ({"gateway/gw1": {"tenants": [""]}}, "is not a tenant name"),
    ({"gateway/gw1": {"tenants": [1]}}, "1 is not a tenant name"),
    ({"gateway/gw1": {"tenants": ["*"]}}, "'*' is not a tenant name"),
    ({"gateway/gw1": {"tenants": [], "admins": "yes"}}, "admins must be true or false"),
    ({"gateway/gw1": {"tenants": [], "admins": 1}}, "admins must be true or false"),
    ({"gateway/gw1": {"tenants": [], "admin": True}}, "unknown key(s) admin"),
])
def test_a_malformed_table_is_refused_naming_what_is_wrong(table: Any, error: str) -> None:
    with pytest.raises(ValueError) as raised:
        GatewayScopes.from_mapping(table)
    assert error in str(raised.value)


def test_the_policy_file_is_read_once_for_both_tables(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[subjects]\n"CN=x,O=y" = "tenant/demo/service/app"\n'
                    '[gateways."gateway/gw1"]\ntenants = ["demo"]\nadmins = true\n')
    assert GatewayScopes.from_toml(path).scope_of(GW1) == GatewayScope(frozenset({"demo"}),
                                                                     admins=True)
    path.write_text('[gateways."gateway/gw1"]\ntenants = ["demo"]\nadmin = true\n')
    with pytest.raises(ValueError, match=f"{path}: gateways.'gateway/gw1': unknown key"):
        GatewayScopes.from_toml(path)


class _FakeStore:
    def run(self, fn: Any) -> Deferred[Any]:
        return succeed(None)


def test_the_core_puts_scopes_in_force_at_start_and_on_a_reload(tmp_path: Path) -> None:
    """A reload that changes only the scopes puts them in force (no policy event: gateways
    are not sent them); one that does not load leaves them as they were."""
    path = tmp_path / "policy.toml"
    path.write_text('[gateways."gateway/gw1"]\ntenants = "*"\nadmins = true\n')
    threads = HeldThreads()
    policy = PolicyFile(str(path), _FakeStore(), Clock(),  # type: ignore[arg-type]
                        run_in_thread=threads)
    seen: list[GatewayScopes] = []
    maps: list[object] = []
    policy.on_scopes.append(seen.append)
    policy.on_change.append(maps.append)
    policy.startService()
    try:
        assert [len(s) for s in seen] == [1] and len(maps) == 1
        path.write_text('[gateways."gateway/gw1"]\ntenants = ["demo"]\n')
        policy.reload()
        threads.finish()
        assert len(seen) == 2 and len(maps) == 1  # the subject map did not change
        assert policy.gateway_scopes.scope_of(GW1) == GatewayScope(frozenset({"demo"}))
        policy.reload()
        threads.finish()
        assert len(seen) == 2  # unchanged
        path.write_text('[gateways."gateway/gw1"]\ntenants = ["demo"]\nadmins = "no"\n')
        policy.reload()
        threads.finish()
        assert len(seen) == 2 and policy.gateway_scopes is seen[1]
    finally:
        policy.stopService()


def test_a_core_whose_policy_scopes_no_gateway_warns_as_it_starts(
        tmp_path: Path) -> None:
    from twisted.logger import globalLogPublisher

    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        from twisted.logger import formatEvent
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    policy = PolicyFile(None, _FakeStore(), Clock())  # type: ignore[arg-type]
    try:
        policy.startService()
    finally:
        globalLogPublisher.removeObserver(observer)
        policy.stopService()
    warning = next(line for line in lines if "no gateway is scoped" in line)
    # It names the section that says how to scope one, a heading of the guide.
    assert warning.endswith('(docs/operations.md, "Gateway scopes")')
    guide = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    assert "\n### Gateway scopes\n" in guide


def test_kcm_config_check_checks_the_gateway_scopes_too(tmp_path: Path) -> None:
    from kcm.cli.config_cmd import ERROR, OK, _policy_file

    path = tmp_path / "policy.toml"
    path.write_text('[gateways."gateway/gw1"]\ntenants = ["demo"]\n')
    found = _policy_file(str(path))
    assert found.level == OK and "1 gateway scopes" in found.text
    path.write_text('[gateways."gateway/gw1"]\ntenants = ["demo/x"]\n')
    found = _policy_file(str(path))
    assert found.level == ERROR and "'demo/x' is not a tenant name" in found.text
