"""The gateway's placeholder rule is the core's (KMIP 1.4 §4, 2.1 §6): of the L4 operations
only a Create sets the ID Placeholder, so the classifier keeps local only the items without
an identifier that follow a local Create; one that follows a local Get alone goes to the
core with the rest of its request."""

from __future__ import annotations

import pytest

from kcm.gateway.classifier import Route, classify
from kcm.kmip.enums import Operation
from kcm.l4.engine import SETS_ID_PLACEHOLDER
from tests.gateway_support import L3_UID, create_l4, create_managed, decrypt, encrypt, get, request

TOKEN = "l4.1.AAAA"


def test_only_an_l4_create_sets_the_placeholder() -> None:
    assert sorted(SETS_ID_PLACEHOLDER) == [Operation.CREATE]


@pytest.mark.parametrize("version", [(1, 4), (2, 1)], ids=["1.4", "2.1"])
@pytest.mark.parametrize("reader", [get(None), encrypt(None), decrypt(None, b"x")],
                         ids=["get", "encrypt", "decrypt"])
def test_an_item_without_an_identifier_after_a_local_get_alone_is_the_core_s(
        reader, version) -> None:
    # The Get set nothing: the reader means a placeholder nobody set, and the core says so.
    classified = classify(request(get(TOKEN), reader, version=version))
    assert classified.route is Route.ALL_REMOTE
    assert classified.local == (False, False)


@pytest.mark.parametrize("version", [(1, 4), (2, 1)], ids=["1.4", "2.1"])
def test_a_local_get_between_a_local_create_and_its_reader_keeps_the_run_local(
        version) -> None:
    classified = classify(request(create_l4(), get(TOKEN), encrypt(L3_UID), encrypt(None),
                                  version=version))
    assert classified.route is Route.ALL_LOCAL


def test_a_local_get_after_a_remote_create_leaves_the_reader_to_the_core() -> None:
    # The reader means the managed key the core made, whatever the Get named.
    classified = classify(request(create_managed(), get(TOKEN), get(None)))
    assert classified.route is Route.ALL_REMOTE
