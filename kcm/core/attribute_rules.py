"""Who may set, change or delete each attribute (KMIP 1.4 §3, 2.1 §4 "Attribute Rules").

One table, used by Create, Register, Re-key and the attribute operations. An
attribute absent from the table is one the server does not manage specially: a
client may set, modify and delete it, and it may have several values. Vendor
attributes follow the "x-" rule (client attributes); "y-" ones are the server's.

Before any rule, :func:`check_offered` refuses what is no attribute of the request's
version (:func:`kcm.kmip.attributes.defined_in`) and an Application Specific Information
the server would have to complete; every path that takes attributes from a client
(Create, Create Key Pair, Register, Derive Key, Re-key, Add/Modify/Set Attribute) calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kcm.core.store.schema import LEVEL_SERVICE_KEY, LEVEL_TENANT_KEY
from kcm.kernel.lifecycle import wrong_state
from kcm.kmip.attributes import VENDOR_TAG, Attribute, attribute_label, defined_in
from kcm.kmip.enums import CryptographicUsageMask, ResultReason, State
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import tag_label
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.ttlv import ItemType


@dataclass(frozen=True, slots=True)
class Rule:
    """``on_create``: a client may supply it in Create/Register; ``modify``: a client may
    give it a value afterwards (Add, Modify, Set, Adjust Attribute); ``delete``: with
    Delete Attribute; ``multi``: it may have several instances."""

    on_create: bool
    modify: bool
    delete: bool
    multi: bool


SERVER = Rule(on_create=False, modify=False, delete=False, multi=False)
SERVER_MULTI = Rule(on_create=False, modify=False, delete=False, multi=True)
CLIENT = Rule(on_create=True, modify=True, delete=True, multi=False)
CLIENT_MULTI = Rule(on_create=True, modify=True, delete=True, multi=True)
AT_CREATE = Rule(on_create=True, modify=False, delete=False, multi=False)
SET_ONCE = Rule(on_create=True, modify=True, delete=False, multi=False)

RULES: dict[int, Rule] = {
    Tag.UNIQUE_IDENTIFIER: SERVER,
    Tag.NAME: CLIENT_MULTI,
    Tag.OBJECT_TYPE: SERVER,
    Tag.CRYPTOGRAPHIC_ALGORITHM: AT_CREATE,
    Tag.CRYPTOGRAPHIC_LENGTH: AT_CREATE,
    Tag.CRYPTOGRAPHIC_PARAMETERS: CLIENT_MULTI,
    Tag.CRYPTOGRAPHIC_DOMAIN_PARAMETERS: AT_CREATE,
    Tag.CERTIFICATE_TYPE: SERVER,
    Tag.CERTIFICATE_LENGTH: SERVER,
    Tag.CERTIFICATE_IDENTIFIER: SERVER,
    Tag.CERTIFICATE_SUBJECT: SERVER,
    Tag.CERTIFICATE_ISSUER: SERVER,
    Tag.X_509_CERTIFICATE_IDENTIFIER: SERVER,
    Tag.X_509_CERTIFICATE_SUBJECT: SERVER,
    Tag.X_509_CERTIFICATE_ISSUER: SERVER,
    Tag.DIGITAL_SIGNATURE_ALGORITHM: SERVER_MULTI,
    Tag.DIGEST: SERVER_MULTI,
    Tag.OPERATION_POLICY_NAME: CLIENT,
    # KMIP 1.4 §3.19: set by the client at creation, changed afterwards by the server only.
    Tag.CRYPTOGRAPHIC_USAGE_MASK: AT_CREATE,
    Tag.LEASE_TIME: SERVER,
    Tag.USAGE_LIMITS: CLIENT,
    Tag.STATE: SERVER,
    Tag.INITIAL_DATE: SERVER,
    Tag.ACTIVATION_DATE: SET_ONCE,
    Tag.PROCESS_START_DATE: SET_ONCE,
    Tag.PROTECT_STOP_DATE: SET_ONCE,
    Tag.DEACTIVATION_DATE: SET_ONCE,
    Tag.DESTROY_DATE: SERVER,
    Tag.COMPROMISE_OCCURRENCE_DATE: SERVER,
    Tag.COMPROMISE_DATE: SERVER,
    Tag.REVOCATION_REASON: SERVER,
    Tag.ARCHIVE_DATE: SERVER,
    Tag.OBJECT_GROUP: CLIENT_MULTI,
    Tag.FRESH: AT_CREATE,  # KMIP 1.4 §3.34: only the server clears it
    Tag.LINK: CLIENT_MULTI,
    Tag.APPLICATION_SPECIFIC_INFORMATION: CLIENT_MULTI,
    Tag.CONTACT_INFORMATION: CLIENT,
    Tag.LAST_CHANGE_DATE: SERVER,
    Tag.ALTERNATIVE_NAME: CLIENT_MULTI,
    Tag.KEY_VALUE_PRESENT: SERVER,
    Tag.KEY_VALUE_LOCATION: CLIENT_MULTI,
    Tag.ORIGINAL_CREATION_DATE: SERVER,
    Tag.RANDOM_NUMBER_GENERATOR: SERVER,
    Tag.PKCS_12_FRIENDLY_NAME: CLIENT,
    Tag.DESCRIPTION: CLIENT,
    Tag.COMMENT: CLIENT,
    Tag.SENSITIVE: SET_ONCE,
    Tag.ALWAYS_SENSITIVE: SERVER,
    Tag.EXTRACTABLE: SET_ONCE,
    Tag.NEVER_EXTRACTABLE: SERVER,
    Tag.SHORT_UNIQUE_IDENTIFIER: SERVER,
    Tag.KEY_FORMAT_TYPE: SERVER,
    Tag.PROTECTION_STORAGE_MASKS: AT_CREATE,
    Tag.PROTECTION_STORAGE_MASK: AT_CREATE,
    Tag.PROTECTION_LEVEL: CLIENT,
    Tag.PROTECTION_PERIOD: CLIENT,
    Tag.QUANTUM_SAFE: CLIENT,
    Tag.NIST_KEY_TYPE: CLIENT,
    Tag.ROTATE_INTERVAL: CLIENT,
    Tag.ROTATE_AUTOMATIC: CLIENT,
    Tag.ROTATE_OFFSET: CLIENT,
    Tag.ROTATE_DATE: CLIENT,
    Tag.ROTATE_NAME: CLIENT,
    Tag.ROTATE_GENERATION: SERVER,
    Tag.ROTATE_LATEST: SERVER,
    # KMIP 2.x derives these from the certificate itself.
    **{tag: SERVER_MULTI for tag in range(Tag.CERTIFICATE_SUBJECT_CN,
                                          Tag.CERTIFICATE_ISSUER_DN_QUALIFIER + 1)},
}

_DEFAULT = CLIENT_MULTI


def rule_for(attribute: Attribute) -> Rule:
    """The rule for one attribute (vendor attributes: "y" is the server's namespace)."""
    if attribute.tag == VENDOR_TAG:
        return SERVER_MULTI if attribute.vendor_identification == "y" else _DEFAULT
    return RULES.get(attribute.tag, _DEFAULT)


def read_only_error(version: Version, what: str) -> KmipError:
    """A client tried to set or change what only the server may: 2.x says so by name."""
    return protected_error(version, f"{what} is set by the server only")


def protected_error(version: Version, message: str) -> KmipError:
    """A change the attribute rules forbid (read-only, or not deletable by a client).

    KMIP 2.x has Attribute Read Only; 1.x has no such reason and its error tables
    (KMIP 1.4 §11) answer Permission Denied.
    """
    reason = ResultReason.ATTRIBUTE_READ_ONLY
    return KmipError(reason, message)


#: Dates a client may change only in some states (KMIP 1.4 §3.24–§3.27, 2.1 §4 rule tables:
#: "Modifiable by client: Yes, only while in Pre-Active state", ...).
_DATE_STATES: dict[int, frozenset[State]] = {
    Tag.ACTIVATION_DATE: frozenset({State.PRE_ACTIVE}),
    Tag.DEACTIVATION_DATE: frozenset({State.PRE_ACTIVE, State.ACTIVE}),
    Tag.PROCESS_START_DATE: frozenset({State.PRE_ACTIVE, State.ACTIVE}),
    Tag.PROTECT_STOP_DATE: frozenset({State.PRE_ACTIVE, State.ACTIVE}),
}
#: Dates that stop being changeable once they have passed.
_UNTIL_REACHED = frozenset({Tag.PROCESS_START_DATE, Tag.PROTECT_STOP_DATE})


def check_date_change(tag: int, state: State, current: int | None, now: int,
                      version: Version) -> None:
    """Refuse a client's change of a state-bound date that the object's state forbids.

    ``current`` is the date's present value (None when unset); ``now`` epoch seconds.
    Other attributes pass. The refusal is the lifecycle error of ``version``
    (2.x Wrong Key Lifecycle State, 1.x Permission Denied), as the OASIS test cases expect.
    """
    states = _DATE_STATES.get(tag)
    if states is None:
        return
    label = tag_label(tag)
    if state not in states:
        allowed = " or ".join(sorted(s.name for s in states))
        raise wrong_state(f"{label} may be changed only while the object is "
                                   f"{allowed}; it is {state.name}")
    if tag in _UNTIL_REACHED and current is not None and current <= now:
        raise wrong_state(f"{label} has passed and can no longer be changed")


#: Attributes a tenant or service key (L2, L3) does not take, and what to use instead: the
#: core's L4 engine and the gateways judge a hierarchy key by its state only, and count its
#: uses for rotation policies (docs/operations.md, "Automatic rotation"), so they would
#: never be enforced.
_NOT_ON_HIERARCHY_KEYS: dict[int, str] = {
    Tag.PROCESS_START_DATE: "set its Deactivation Date",
    Tag.PROTECT_STOP_DATE: "set its Deactivation Date",
    Tag.USAGE_LIMITS: "cap its use with a rotation policy's max_uses",
}


def level_takes(tag: int, level: int | None) -> bool:
    """Whether an object at ``level`` (None: an ordinary object) may carry attribute ``tag``:
    a tenant or service key takes no Process Start Date, Protect Stop Date or Usage Limits."""
    return tag not in _NOT_ON_HIERARCHY_KEYS or level not in (LEVEL_TENANT_KEY,
                                                              LEVEL_SERVICE_KEY)


def check_hierarchy_date(tag: int, level: int | None, version: Version) -> None:
    """Refuse a client's Process Start Date, Protect Stop Date or Usage Limits on a tenant
    or service key (:func:`level_takes`): 2.x Attribute Read Only, 1.x Permission Denied.
    The message names what ends or caps their use instead (their Deactivation Date, a
    rotation policy)."""
    if not level_takes(tag, level):
        raise protected_error(version, f"{tag_label(tag)} is not offered on a tenant or "
                                       f"service key; {_NOT_ON_HIERARCHY_KEYS[tag]}")


#: The Cryptographic Usage Mask of every tenant and service key (L2, L3).
HIERARCHY_USAGE_MASK = int(CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT
                           | CryptographicUsageMask.WRAP_KEY
                           | CryptographicUsageMask.UNWRAP_KEY)


def check_hierarchy_mask(attribute: Attribute, level: int | None, version: Version) -> None:
    """Refuse a client's Cryptographic Usage Mask on a tenant or service key other than
    :data:`HIERARCHY_USAGE_MASK`: the L4 engine and the gateways judge a hierarchy key by
    its state only, so another mask would be stored and never enforced (2.x Attribute Read
    Only, 1.x Permission Denied)."""
    if (attribute.tag == Tag.CRYPTOGRAPHIC_USAGE_MASK
            and level in (LEVEL_TENANT_KEY, LEVEL_SERVICE_KEY)
            and attribute.typed != HIERARCHY_USAGE_MASK):
        raise protected_error(version, "a tenant or service key's Cryptographic Usage Mask "
                                       "is Encrypt, Decrypt, Wrap Key and Unwrap Key; to "
                                       "stop its use, revoke or deactivate it")


#: The longest Name or Object Group, in UTF-8 bytes: the store indexes their text (for
#: Locate), and PostgreSQL's indexes take rows of at most 2,704 bytes (a longer one was a
#: General Failure there, and stored on SQLite).
MAX_INDEXED_TEXT = 1024


def _check_indexed_length(attribute: Attribute) -> None:
    """Refuse (Invalid Field) a Name or Object Group longer than :data:`MAX_INDEXED_TEXT`,
    or with a NUL character (PostgreSQL's text holds none: a General Failure there, while
    SQLite stored it)."""
    if attribute.tag == Tag.NAME:
        value = attribute.value.find(Tag.NAME_VALUE) if attribute.value is not None else None
    elif attribute.tag == Tag.OBJECT_GROUP:
        value = attribute.value
    else:
        return
    text = value.value if value is not None else None
    if isinstance(text, str) and len(text.encode("utf-8", "surrogatepass")) > MAX_INDEXED_TEXT:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"{tag_label(attribute.tag)} is at most {MAX_INDEXED_TEXT} bytes")
    if isinstance(text, str) and "\x00" in text:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"{tag_label(attribute.tag)} may not contain a NUL character")


def check_offered(attribute: Attribute, version: Version) -> None:
    """Refuse, in a request of ``version``, what a client may not give as an attribute.

    * Anything that is not an attribute of that version: a tag that is none (Batch Count,
      Key Material), an attribute a later version added, a 1.x name without the "x-"/"y-"
      prefix of a custom attribute. 2.x answers Invalid Attribute; 1.x, which has no such
      reason, Invalid Field (KMIP 1.4 §11: a field the request may not hold).
    * An Application Specific Information without Application Data: the server would have
      to make the data for the namespace (KMIP 1.4 §3.36, 2.1 §4.4), and it supports no
      namespace (Query lists none), so Application Namespace Not Supported.
    """
    label = attribute_label(attribute)
    if not defined_in(attribute, version):
        raise KmipError(ResultReason.INVALID_ATTRIBUTE,
                        f"{label} is not an attribute of KMIP {version[0]}.{version[1]}",
                        v1_reason=ResultReason.INVALID_FIELD)
    value = attribute.value
    _check_indexed_length(attribute)
    if (attribute.tag == Tag.APPLICATION_SPECIFIC_INFORMATION and value is not None
            and value.type is ItemType.STRUCTURE and value.find(Tag.APPLICATION_DATA) is None):
        raise KmipError(ResultReason.APPLICATION_NAMESPACE_NOT_SUPPORTED,
                        "Application Specific Information needs Application Data: the "
                        "server supports no application namespace")


def check_client_attributes(attributes: list[Attribute], version: Version) -> None:
    """Refuse attributes a client may not supply when creating or registering an object
    (:func:`check_offered`, then the rules), several values of a single-valued one, and
    an attribute without its Attribute Value (a required field: Invalid Message)."""
    seen: set[int] = set()
    for attribute in attributes:
        if attribute.value is None:
            raise KmipError(ResultReason.INVALID_MESSAGE,
                            f"{attribute_label(attribute)} has no Attribute Value")
        check_offered(attribute, version)
        rule = rule_for(attribute)
        label = attribute_label(attribute)
        if not rule.on_create:
            raise read_only_error(version, label)
        if not rule.multi:
            if attribute.tag in seen:
                reason = ResultReason.ATTRIBUTE_SINGLE_VALUED
                raise KmipError(reason, f"{label} may have only one value")
            seen.add(attribute.tag)

