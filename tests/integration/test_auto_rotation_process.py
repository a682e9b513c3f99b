"""Service keys that rotate by themselves, end to end: a real `twistd kcm-core` (state sweeps
every 0.2 s) and two real `twistd kcm-gateway` processes, policies set with `kcm core`.

* An L3 with a 2-second interval rotates; both gateways seal new L4s under the new version
  within 1 s of the rotation; L4s sealed before still decrypt after the old version is
  Deactivated at the end of the overlap, until that version is destroyed.
* The rotation is an audit record naming the policy; `kcm core service show` lists the
  versions; `kcm audit verify` passes afterwards.
* With no policy at all, a version whose count reaches the built-in cap (2**31) is
  replaced, audited as the built-in cap's.

Every request here is KMIP 2.1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.conformance.client import KmipClient
from kcm.kmip.enums import ObjectType, Operation, ResultReason
from kcm.kmip.payloads.lifecycle import DestroyRequest
from kcm.kmip.tags import Tag
from kcm.l4 import token as l4_token
from kcm.testing.processes import deploy, start_together
from tests.e2e_support import (
    CoreProcess,
    GatewayProcess,
    audit_rows,
    decrypt_sealed,
    send_v21,
    succeeded_v21,
    wait_until,
)
from tests.gateway_support import create_l4, encrypt, item

#: New L4s are sealed under a new version at every gateway within this of the rotation.
PROPAGATION_BOUND = 1.0


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[CoreProcess, GatewayProcess, GatewayProcess]]:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.state_sweep_interval = 0.2
    # A managed key below rotates every 2 s: allow it (the default minimum is an hour).
    core.limits = {**core.limits, "min_rotate_interval": 1}
    core.write_config()
    a = GatewayProcess(tmp_path / "gateway-a", core)
    b = GatewayProcess(tmp_path / "gateway-b", core)
    core.start()
    try:
        start_together([a, b])
        a.wait_linked()
        b.wait_linked()
        yield core, a, b
    finally:
        a.stop()
        b.stop()
        core.stop()


def sealed_under(client: KmipClient) -> str:
    """The L3 a new L4 created at ``client``'s gateway is sealed under."""
    [created] = succeeded_v21(client, create_l4())
    return l4_token.parse(created.unique_identifier).l3_uid


def service_show(core: CoreProcess) -> dict:
    return json.loads(core.kcm("core", "service", "show", "demo", "app", "--json").stdout)


@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_an_l3_with_a_2s_interval_rotates_and_gateways_follow_within_1s(deployment) -> None:
    core, a, b = deployment
    with a.client("app") as app_a, b.client("app") as app_b, a.client("admin") as admin:
        [created] = succeeded_v21(app_a, create_l4())
        old_token = created.unique_identifier
        v1 = l4_token.parse(old_token).l3_uid
        [record] = succeeded_v21(app_a, encrypt(old_token, b"a customer record"))
        assert sealed_under(app_b) == v1

        set_at = time.time()
        core.kcm("core", "service", "policy", "demo", "app", "--interval", "2s",
                 "--overlap", "1s")
        seen: dict[str, float] = {}
        clients = {"A": app_a, "B": app_b}
        deadline = time.monotonic() + 10
        while len(seen) < 2:
            for name, client in clients.items():
                if name not in seen and sealed_under(client) != v1:
                    seen[name] = time.time()
            assert time.monotonic() < deadline, f"no gateway sealed under a new version: {seen}"
            time.sleep(0.02)
        # Nothing more rotates from here (the second rotation may have come meanwhile).
        core.kcm("core", "service", "policy", "demo", "app", "--interval", "0")

        [rotation, *_] = [r for r in audit_rows(core) if r["operation"] == "AutoRotate"]
        rotated_at = next(r["at"] for r in _audit_times(core)
                          if r["seq"] == rotation["seq"]) / 1e6
        assert rotation["detail"]["policy"] == "service demo/app"
        assert rotation["detail"]["trigger"] == "interval"
        assert rotation["detail"]["age"] >= 2 and rotated_at >= set_at
        delays = {name: when - rotated_at for name, when in seen.items()}
        print("\nnew L4s sealed under the new version: " + ", ".join(
            f"gateway {name} {delay * 1000:.0f} ms after the rotation"
            for name, delay in sorted(delays.items())))
        assert max(delays.values()) < PROPAGATION_BOUND, delays

        # The overlap ends: the old version is Deactivated (decrypt-only) everywhere.
        wait_until(lambda: [r.result_reason for r in send_v21(app_b, encrypt(old_token))]
                   == [ResultReason.WRONG_KEY_LIFECYCLE_STATE], "v1 deactivated at B",
                   timeout=5)
        shown = service_show(core)
        states = {v["unique_identifier"]: v["state"] for v in shown["versions"]}
        assert states[v1] == "DEACTIVATED"
        assert [v["current"] for v in shown["versions"]].count(True) == 1
        assert shown["versions"][-1]["unique_identifier"] == v1
        for client in (app_a, app_b):
            [opened] = succeeded_v21(client, decrypt_sealed(old_token, record))
            assert opened.data == b"a customer record"

        # Destroying the old version stops its tokens, at every gateway.
        succeeded_v21(admin, item(Operation.DESTROY, DestroyRequest(unique_identifier=v1)))
        for client in (app_a, app_b):
            wait_until(lambda c=client: [r.result_reason for r in send_v21(
                c, decrypt_sealed(old_token, record))] == [ResultReason.OBJECT_DESTROYED],
                "the destroyed version refused", timeout=2)
        assert sealed_under(app_a) != v1

    verified = core.kcm("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _audit_times(core: CoreProcess) -> list[dict]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(core.database)
    try:
        with engine.connect() as connection:
            return [dict(row) for row in connection.execute(sqlalchemy.text(
                "SELECT seq, at FROM audit_log")).mappings()]
    finally:
        engine.dispose()


#: The gateways' usage_report_interval (the default), and how long at most the core takes
#: from a report that reaches the cap to every gateway sealing under the new version
#: (docs/operations.md, "Automatic rotation": the overshoot bound).
REPORT_INTERVAL = 0.25
REACTION_BOUND = 1.0


@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_a_usage_cap_of_1000_rotates_after_about_1000_creates_over_two_gateways(
        deployment) -> None:
    core, a, b = deployment
    core.kcm("core", "service", "policy", "demo", "app", "--max-uses", "1000")
    with a.client("app") as app_a, b.client("app") as app_b:
        v1 = sealed_under(app_a)
        sealed: dict[str, int] = {v1: 1}
        moved: set[int] = set()
        started = time.monotonic()
        batches = 0
        while len(moved) < 2:
            client = (app_a, app_b)[batches % 2]
            for created in succeeded_v21(client, *[create_l4()] * 10):
                l3 = l4_token.parse(created.unique_identifier).l3_uid
                sealed[l3] = sealed.get(l3, 0) + 1
                if l3 != v1:
                    moved.add(batches % 2)
            batches += 1
            assert batches < 600, f"no rotation after {sum(sealed.values())} creates: {sealed}"
            time.sleep(0.01)
        elapsed = time.monotonic() - started
    rate = sum(sealed.values()) / elapsed
    overshoot = sealed[v1] - 1000
    bound = rate * (REPORT_INTERVAL + REACTION_BOUND)
    print(f"\n{sealed[v1]} L4s sealed under version 1 (cap 1000, overshoot {overshoot}; "
          f"bound at {rate:.0f} creates/s: {bound:.0f})")
    assert 0 <= overshoot <= bound

    [rotation] = [r for r in audit_rows(core) if r["operation"] == "AutoRotate"]
    assert rotation["detail"]["trigger"] == "max_uses"
    assert rotation["detail"]["policy"] == "service demo/app"
    assert 1000 <= rotation["detail"]["uses"] <= sealed[v1]
    # Every seal was counted, once: both gateways reported all they did.
    wait_until(lambda: {v["unique_identifier"]: v["uses"] for v in service_show(core)[
        "versions"]}.get(v1) == sealed[v1], "every use of version 1 reported", timeout=3)


def test_a_managed_key_with_kmip_2_1_rotate_attributes_rotates_by_itself(deployment) -> None:
    from kcm.kmip.attributes import Attribute, Name
    from kcm.kmip.enums import NameType
    from kcm.kmip.payloads import ActivateRequest, CreateRequest, LocateRequest
    from kcm.testing.requests import aes256, get_attributes

    core, a, _ = deployment
    name = Attribute.of(Tag.NAME, Name(value="orders-key", type=NameType.UNINTERPRETED_TEXT_STRING))
    with a.client("app") as app:
        [created] = succeeded_v21(app, item(Operation.CREATE, CreateRequest(
            object_type=ObjectType.SYMMETRIC_KEY, attributes=aes256([
                name, Attribute.of(Tag.ROTATE_AUTOMATIC, True),
                Attribute.of(Tag.ROTATE_INTERVAL, 2)]))))
        old = created.unique_identifier
        succeeded_v21(app, item(Operation.ACTIVATE, ActivateRequest(unique_identifier=old)))

        def latest() -> list[str]:
            [found] = succeeded_v21(app, item(Operation.LOCATE, LocateRequest(attributes=[
                        name, Attribute.of(Tag.ROTATE_LATEST, True)])))
            return found.unique_identifiers or []

        wait_until(lambda: latest() not in ([], [old]), "a rotated replacement", timeout=8)
        [new] = latest()
        [got] = succeeded_v21(app, get_attributes(new, Tag.ROTATE_GENERATION, Tag.ROTATE_DATE,
                                              Tag.LINK))
        values = {attribute.tag: attribute.typed for attribute in got.attributes}
        assert values[Tag.ROTATE_GENERATION] == 1 and values[Tag.ROTATE_DATE] > 0
    [record, *_] = [r for r in audit_rows(core) if r["operation"] == "AutoRotate"]
    assert record["detail"]["policy"] == f"Rotate Interval of {old}"


def test_without_any_policy_a_version_at_the_built_in_cap_is_replaced(tmp_path: Path) -> None:
    """A real kcm-core with no rotation policy at all: the current version of demo/app
    has 2**31 - 1 encryptions counted (written to its database before it starts: 2**31
    real ones would take days); one more L4 sealed at the core reaches the built-in cap,
    and the next sweep replaces the version, audited as the built-in cap's."""
    import sqlite3

    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.state_sweep_interval = 0.2
    core.write_config()
    shown = service_show(core)
    assert (shown["policy"]["effective"]["max_uses"],
            shown["policy"]["effective"]["max_uses_from"]) == (2**31, "built-in")
    [v1] = [v["unique_identifier"] for v in shown["versions"] if v["current"]]
    with sqlite3.connect(tmp_path / "core" / "kcm.db") as db:
        assert db.execute("SELECT count(*) FROM rotation_policies").fetchone() == (0,)
        db.execute("INSERT INTO l3_usage (uid, uses, reported_at) VALUES (?, ?, 0)",
                   (v1, 2**31 - 1))
    core.start()
    sealed: list[str] = []
    try:
        with core.client("app") as app:
            time.sleep(0.5)  # (sweeps judge the keys marked when made: not due)
            assert not [r for r in audit_rows(core) if r["operation"] == "AutoRotate"]
            wait_until(lambda: sealed.append(sealed_under(app)) or sealed[-1] != v1,
                       "a new version after the cap", timeout=5)
    finally:
        core.stop()
    under_v1 = sealed.count(v1)
    assert under_v1 >= 1 and sealed[0] == v1
    [rotation] = [r for r in audit_rows(core) if r["operation"] == "AutoRotate"]
    assert {k: rotation["detail"][k] for k in ("policy", "trigger", "max_uses")} == {
        "policy": "built-in", "trigger": "max_uses", "max_uses": 2**31}
    # (the L4s sealed before the sweep came are counted: the cap and a little more)
    assert rotation["detail"]["uses"] == 2**31 - 1 + under_v1
    versions = {v["unique_identifier"]: v for v in service_show(core)["versions"]}
    assert versions[v1]["current"] is False and versions[v1]["uses"] == 2**31 - 1 + under_v1
    assert versions[v1]["deactivation_date"] is not None  # (after the default overlap)
