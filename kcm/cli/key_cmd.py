"""``kcm key`` and ``kcm l4``: key operations over KMIP, at kcm-core or kcm-gateway.

* ``kcm key create|register|get|locate|get-attributes|activate|revoke|destroy|encrypt|decrypt|
  query`` send one KMIP request each; ``kcm l4 create`` creates an L4 (a DEK) at kcm-gateway.
* Every one takes ``--server HOST:PORT`` and the client's ``--cert``, ``--key`` and ``--ca``
  (PEM files), or ``$KCM_SERVER``, ``$KCM_CERT``, ``$KCM_KEY``, ``$KCM_CA``, or a client
  configuration file (``--client-config FILE`` or ``$KCM_CLIENT_CONFIG``: the SDK's
  ``[client]`` table, read and checked by the SDK's loader, :mod:`kcm.client.config`, with
  its ``gateway``, ``core`` and ``version`` too; its relative paths are taken from its own
  directory), in that order; ``--json`` prints the answer as one JSON object. ``--timeout``
  bounds the whole request, failover included (30 s; at most 86400);
  ``--connect-timeout`` each connection attempt within it (10 s, or the timeout divided by
  the number of servers if less). A server without a port is at 5696 (KMIP's).
* ``create``, ``register`` and ``l4 create`` print the new Unique Identifier alone.
* ``encrypt`` and ``decrypt`` read the data from ``--data-hex``, ``--in FILE`` or stdin and
  write raw bytes to stdout (or ``--out FILE``; ``--hex``: hex and a newline); the IV and the
  AEAD tag the server chose (AES-GCM, the default for an AES key) go to stderr as
  ``iv HEX`` and ``tag HEX`` lines, and are given back to ``decrypt`` with ``--iv-hex`` and
  ``--tag-hex``.

Exit status: 0 success; 1 the server answered with a failure (its Result Reason and Result
Message on one stderr line), 75 if that failure says to try again (a tenant over its request
rate, the key store unavailable: :func:`kcm.cli.exit_status.answer_status`) or the server
could not be reached; 2 bad usage or no connection for good.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kcm.cli import CommandError, add_command
from kcm.cli.exit_status import answer_status

if TYPE_CHECKING:
    from kcm.client import Session
    from kcm.client.config import ClientConfig
    from kcm.client.operations import Operations
    from kcm.kmip.attributes import CryptographicParameters
    from kcm.kmip.enums import CryptographicAlgorithm


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``key`` and ``l4`` and their actions to the ``kcm`` parser."""
    actions = add_command(subparsers, "key", "key operations over KMIP (a client)", __doc__)

    create = _action(actions, "create", "create a symmetric key; print its Unique Identifier",
                     _run_create)
    _key_shape(create)
    create.add_argument("--name", help="a Name attribute for the key")

    register_ = _action(actions, "register", "register a symmetric key; print its Unique "
                        "Identifier", _run_register)
    material = register_.add_mutually_exclusive_group(required=True)
    material.add_argument("--key-hex", metavar="HEX",
                          help="the key, in hex (a command line is visible to other "
                          "users: prefer --key-file for a real key)")
    material.add_argument("--key-file", metavar="FILE", help="a file holding the raw key")
    register_.add_argument("--algorithm", default="AES", help="Cryptographic Algorithm "
                           "(default: AES)")
    register_.add_argument("--name", help="a Name attribute for the key")

    get = _action(actions, "get", "get a key (print its material in hex)", _run_get)
    get.add_argument("uid", metavar="UID")

    locate = _action(actions, "locate", "find keys; print their Unique Identifiers",
                     _run_locate)
    locate.add_argument("--name", help="the Name the keys have")
    locate.add_argument("--algorithm", help="the Cryptographic Algorithm the keys have")
    locate.add_argument("--state", help="the State the keys are in (e.g. ACTIVE)")
    locate.add_argument("--max", type=int, dest="maximum_items", metavar="N",
                        help="at most N identifiers")

    get_attributes = _action(actions, "get-attributes", "print a key's attributes",
                             _run_get_attributes)
    get_attributes.add_argument("uid", metavar="UID")
    get_attributes.add_argument("attributes", nargs="*", metavar="ATTRIBUTE",
                                help="attribute names, e.g. State 'Cryptographic Length' "
                                     "(default: all)")

    for name, help_text in (("activate", "activate a key"), ("destroy", "destroy a key")):
        simple = _action(actions, name, help_text, _run_simple)
        simple.add_argument("uid", metavar="UID")

    revoke = _action(actions, "revoke", "revoke a key", _run_revoke)
    revoke.add_argument("uid", metavar="UID")
    revoke.add_argument("--reason", default="UNSPECIFIED",
                        help="Revocation Reason Code, e.g. KEY_COMPROMISE (default: "
                             "UNSPECIFIED)")
    revoke.add_argument("--message", help="a Revocation Message")

    encrypt = _action(actions, "encrypt", "encrypt data with a key", _run_encrypt)
    _crypt_options(encrypt)

    decrypt = _action(actions, "decrypt", "decrypt data with a key", _run_decrypt)
    _crypt_options(decrypt)
    decrypt.add_argument("--tag-hex", metavar="HEX", help="the AEAD tag encrypt gave")

    _action(actions, "query", "what the server supports", _run_query)

    l4_actions = add_command(subparsers, "l4", "L4 keys (DEKs) at kcm-gateway, over KMIP",
                             "``kcm l4 create``: create an L4 at kcm-gateway; print its token "
                             "(its Unique Identifier). Options as for ``kcm key``.")
    l4_create = _action(l4_actions, "create", "create an L4; print its token", _run_l4_create,
                        prog="kcm l4 create")
    _key_shape(l4_create)


def _action(actions: argparse._SubParsersAction, name: str, help_text: str,
            run: Callable[[argparse.Namespace], int], prog: str | None = None
            ) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help_text)
    connection_options(parser)
    parser.set_defaults(run=run, prog=prog or f"kcm key {name}", key_action=name)
    return parser


def connection_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--server``, ``--cert``, ``--key``, ``--ca``, ``--timeout``,
    ``--connect-timeout``, ``--client-config`` and ``--json``."""
    group = parser.add_argument_group("connection")
    group.add_argument("--server", default=os.environ.get("KCM_SERVER"), metavar="HOST:PORT",
                       help="the KMIP server, or several separated by commas: the first that "
                            "answers (default: $KCM_SERVER)")
    group.add_argument("--cert", default=os.environ.get("KCM_CERT"), metavar="PEM",
                       help="the client's certificate (default: $KCM_CERT)")
    group.add_argument("--key", default=os.environ.get("KCM_KEY"), metavar="PEM",
                       help="the client's private key (default: $KCM_KEY)")
    group.add_argument("--ca", default=os.environ.get("KCM_CA"), metavar="PEM",
                       help="the CA that issued the server's certificate (default: $KCM_CA)")
    group.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                       help="for the whole request, failover included (default: 30)")
    group.add_argument("--connect-timeout", type=float, default=None, metavar="SECONDS",
                       help="for each connection attempt, within --timeout (default: 10, or "
                            "the timeout divided by the number of servers if less)")
    group.add_argument("--client-config", default=os.environ.get("KCM_CLIENT_CONFIG"),
                       metavar="FILE",
                       help="a TOML file whose [client] table (the SDK's) gives what neither "
                            "an option nor the environment does "
                            "(default: $KCM_CLIENT_CONFIG)")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def _key_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algorithm", default="AES",
                        help="Cryptographic Algorithm (default: AES)")
    parser.add_argument("--length", type=int, default=256,
                        help="Cryptographic Length in bits (default: 256)")


def _crypt_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uid", metavar="UID")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data-hex", metavar="HEX", help="the data, in hex (default: stdin)")
    data.add_argument("--in", dest="input", metavar="FILE", help="read the data from FILE")
    parser.add_argument("--out", metavar="FILE", help="write the result to FILE")
    parser.add_argument("--hex", action="store_true", help="write the result in hex")
    parser.add_argument("--mode", help="Block Cipher Mode, e.g. GCM, CBC (default: the "
                                       "server's, AES-GCM for an AES key)")
    parser.add_argument("--padding", help="Padding Method, e.g. PKCS5, NONE")
    parser.add_argument("--iv-hex", metavar="HEX", help="the IV / nonce")
    parser.add_argument("--aad-hex", metavar="HEX", help="AEAD additional data")


# Parsing values --------------------------------------------------------------------------

def parse_enum(enum: type, text: str, what: str) -> Any:
    """``text`` as a member of ``enum``: its name in any case, spaces or dashes for
    underscores ("key compromise"), or a number; CommandError naming ``what``."""
    key = text.strip().upper().replace("-", "_").replace(" ", "_")
    if key in enum.__members__:
        return enum[key]
    try:
        return enum(int(text, 0))
    except ValueError:
        pass
    choices = ", ".join(enum.__members__)
    raise CommandError(f"{what} {text!r} is not one of {choices}")


def parse_hex(text: str | None, what: str) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError as e:
        raise CommandError(f"{what} is not hex: {e}") from e


def attribute_tag(name: str) -> int:
    """The tag of an attribute named as the spec does ("Cryptographic Length"), in CamelCase,
    or with underscores; CommandError when there is none."""
    from kcm.kmip import registry

    for candidate in (name, name.replace("_", " ").replace("-", " ").title(),
                      name.replace("_", " ").replace("-", " ")):
        tag = registry.attribute_tag(candidate)
        if tag is not None:
            return tag
        try:
            return registry.tag_from_name(candidate)
        except KeyError:
            continue
    raise CommandError(f"{name!r} is not an attribute name")


# Rendering answers ------------------------------------------------------------------------

def item_json(item: Any) -> Any:
    """A TTLV item's value as JSON: structures as objects by tag name (lists for repeated
    fields), enumerations by name, masks as flag names, byte strings in hex."""
    from kcm.kmip import registry
    from kcm.ttlv import ItemType

    if item.type is ItemType.STRUCTURE:
        out: dict[str, list] = {}
        for child in item.value:
            out.setdefault(registry.tag_name(child.tag) or f"0x{child.tag:06X}", []).append(
                item_json(child))
        return {name: values[0] if len(values) == 1 else values
                for name, values in out.items()}
    if item.type is ItemType.ENUMERATION:
        return registry.enum_name(item.tag, item.value) or item.value
    if item.type is ItemType.BYTE_STRING:
        return item.value.hex()
    if item.type is ItemType.INTEGER and registry.is_mask(item.tag):
        return registry.mask_to_names(item.tag, item.value) or item.value
    return item.value


def attribute_name(attribute: Any) -> str:
    from kcm.kmip.labels import tag_label

    if attribute.name:
        return attribute.name
    return tag_label(attribute.tag)


def attributes_json(attributes: list) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attribute in attributes:
        name = attribute_name(attribute)
        value = None if attribute.value is None else item_json(attribute.value)
        if name in out:
            out[name] = (out[name] if isinstance(out[name], list) else [out[name]]) + [value]
        else:
            out[name] = value
    return out


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(_text(v) for v in value)
    return str(value)


def _print_json(value: Any) -> None:
    print(json.dumps(value, sort_keys=True))


# Running ----------------------------------------------------------------------------------

#: The options (and environment variables) that give a ``[client]`` setting, over the
#: client file's.
OPTION_SETTINGS = ("server", "cert", "key", "ca", "timeout", "connect_timeout")


def client_settings(args: argparse.Namespace) -> ClientConfig:
    """The client's settings: the options (or the environment) over the client file's
    ``[client]`` table, checked by the SDK's one loader
    (:meth:`kcm.client.config.ClientConfig.from_table`, as ``kcm config check`` checks the
    file); a ``--server`` sends every call there (the file's ``gateway`` and ``core`` too).
    CommandError when something is missing or wrong."""
    from kcm.client.config import ClientConfig, read_client_table

    path = args.client_config
    table: dict[str, Any] = {}
    if path:
        try:
            table = read_client_table(path)
        except OSError as e:
            raise CommandError(f"cannot read {path}: {e.strerror}") from e
        except ValueError as e:
            raise CommandError(str(e)) from e
    given = {n: getattr(args, n) for n in OPTION_SETTINGS if getattr(args, n) is not None}
    if "server" in given:
        table = {n: value for n, value in table.items() if n not in ("gateway", "core")}
    for n in ("cert", "key", "ca"):
        if given.get(n):  # from the working directory, not the file's
            given[n] = os.path.abspath(given[n])
    merged = {**table, **given}
    if all(merged.get(n) is None for n in ("server", "gateway", "core")):
        raise CommandError("no server: give --server HOST:PORT or set KCM_SERVER")
    missing = [n for n in ("cert", "key", "ca") if not merged.get(n)]
    if missing:
        raise CommandError("no " + ", ".join(f"--{n}" for n in missing) + " (or "
                           + ", ".join(f"KCM_{n.upper()}" for n in missing) + ")")
    names = {n: "--" + n.replace("_", "-") for n in given}
    try:
        config = ClientConfig.from_table(
            merged, os.path.dirname(os.path.abspath(path)) if path else ".", names=names)
    except ValueError as e:  # (one naming the file's setting says which file)
        raise CommandError(f"{path}: {e}" if path and "client." in str(e) else str(e)
                           ) from None
    for n in ("cert", "key", "ca"):
        if not os.path.isfile(getattr(config, n)):
            raise CommandError(f"{names.get(n, f'client.{n}')} {getattr(config, n)}: "
                               "no such file")
    return config


def _session(args: argparse.Namespace) -> Operations:
    """The client of :func:`client_settings`: a Session, or a SplitHorizon when the client
    file's ``gateway`` and ``core`` differ."""
    from kcm.client import KmipClientError

    config = client_settings(args)
    try:
        return config.session()
    except KmipClientError as e:
        raise CommandError(str(e)) from e


def _kmip(args: argparse.Namespace, operation: Callable[[Any], int]) -> int:
    """Run ``operation(session)``: a failure answer is exit status 1 (75 if it says to try
    again) with its reason and message on one stderr line; a connection error is a
    CommandError (exit status 2, or 75 if temporary)."""
    from kcm.client import KmipClientError, KmipOperationFailed
    from kcm.kmip.enums import ResultReason
    from kcm.kmip.labels import enum_label

    session = _session(args)
    try:
        return operation(session)
    except KmipOperationFailed as e:
        reason = enum_label(ResultReason, e.reason)
        if args.json:
            _print_json({"result_status": "failure", "result_reason": reason,
                         "result_message": e.message})
        message = " ".join(e.message.split())
        print(f"{args.prog}: {reason}: {message}", file=sys.stderr)
        return answer_status(message, e.reason)
    except KmipClientError as e:
        raise CommandError(str(e)) from e
    finally:
        session.close()


def _name_attribute(name: str | None) -> list:
    if name is None:
        return []
    from kcm.kmip.attributes import Attribute, Name
    from kcm.kmip.enums import NameType
    from kcm.kmip.tags import Tag

    return [Attribute.of(Tag.NAME, Name(value=name, type=NameType.UNINTERPRETED_TEXT_STRING))]


def _print_uid(args: argparse.Namespace, uid: str) -> int:
    if args.json:
        _print_json({"unique_identifier": uid})
    else:
        print(uid)
    return 0


def _algorithm(text: str) -> CryptographicAlgorithm:
    from kcm.kmip.enums import CryptographicAlgorithm

    return parse_enum(CryptographicAlgorithm, text, "--algorithm")


def _run_create(args: argparse.Namespace) -> int:
    algorithm = _algorithm(args.algorithm)
    return _kmip(args, lambda s: _print_uid(args, s.create(algorithm, args.length,
                                                           _name_attribute(args.name))))


def _run_l4_create(args: argparse.Namespace) -> int:
    algorithm = _algorithm(args.algorithm)
    return _kmip(args, lambda s: _print_uid(args, s.create_l4(algorithm, args.length)))


def _run_register(args: argparse.Namespace) -> int:
    algorithm = _algorithm(args.algorithm)
    if args.key_file is not None:
        try:
            with open(args.key_file, "rb") as f:
                key = f.read()
        except OSError as e:
            raise CommandError(f"cannot read {args.key_file}: {e.strerror}") from e
    else:
        key = parse_hex(args.key_hex, "--key-hex")
    if not key:
        raise CommandError("the key is empty")
    return _kmip(args, lambda s: _print_uid(args, s.register_symmetric(
        key, algorithm, _name_attribute(args.name))))


def _run_get(args: argparse.Namespace) -> int:
    from kcm.kmip.enums import CryptographicAlgorithm, KeyFormatType, ObjectType
    from kcm.kmip.labels import enum_label

    def get(session: Session) -> int:
        answer = session.get(args.uid)
        block = getattr(answer.object, "key_block", None)
        material = block.key_bytes if block is not None else None
        if args.json:
            _print_json({
                "unique_identifier": answer.unique_identifier,
                "object_type": enum_label(ObjectType, answer.object_type),
                "cryptographic_algorithm": (None if block is None else enum_label(
                    CryptographicAlgorithm, block.cryptographic_algorithm)),
                "cryptographic_length": None if block is None else block.cryptographic_length,
                "key_format_type": (None if block is None else enum_label(
                    KeyFormatType, block.key_format_type)),
                "key": None if material is None else material.hex()})
        elif material is None:
            raise CommandError(f"{answer.unique_identifier} holds no plain key material "
                               f"({enum_label(ObjectType, answer.object_type)})")
        else:
            print(material.hex())
        return 0

    return _kmip(args, get)


def _run_locate(args: argparse.Namespace) -> int:
    from kcm.kmip.attributes import Attribute
    from kcm.kmip.enums import State
    from kcm.kmip.tags import Tag

    attributes = _name_attribute(args.name)
    if args.algorithm:
        attributes.append(Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, _algorithm(args.algorithm)))
    if args.state:
        attributes.append(Attribute.of(Tag.STATE, parse_enum(State, args.state, "--state")))

    def locate(session: Session) -> int:
        uids = session.locate(attributes, args.maximum_items)
        if args.json:
            _print_json({"unique_identifiers": uids})
        else:
            for uid in uids:
                print(uid)
        return 0

    return _kmip(args, locate)


def _run_get_attributes(args: argparse.Namespace) -> int:
    tags = [attribute_tag(name) for name in args.attributes]

    def get_attributes(session: Session) -> int:
        found = attributes_json(session.get_attributes(args.uid, tags))
        if args.json:
            _print_json({"unique_identifier": args.uid, "attributes": found})
        else:
            for name, value in found.items():
                print(f"{name}: {_text(value)}")
        return 0

    return _kmip(args, get_attributes)


def _run_simple(args: argparse.Namespace) -> int:
    def run(session: Session) -> int:
        getattr(session, args.key_action)(args.uid)
        return _print_uid(args, args.uid) if args.json else 0

    return _kmip(args, run)


def _run_revoke(args: argparse.Namespace) -> int:
    from kcm.kmip.enums import RevocationReasonCode

    code = parse_enum(RevocationReasonCode, args.reason, "--reason")

    def revoke(session: Session) -> int:
        session.revoke(args.uid, code, args.message)
        return _print_uid(args, args.uid) if args.json else 0

    return _kmip(args, revoke)


def _parameters(args: argparse.Namespace) -> CryptographicParameters | None:
    if args.mode is None and args.padding is None:
        return None
    from kcm.kmip.attributes import CryptographicParameters
    from kcm.kmip.enums import BlockCipherMode, PaddingMethod

    return CryptographicParameters(
        block_cipher_mode=None if args.mode is None else parse_enum(
            BlockCipherMode, args.mode, "--mode"),
        padding_method=None if args.padding is None else parse_enum(
            PaddingMethod, args.padding, "--padding"))


def _input(args: argparse.Namespace) -> bytes:
    if args.data_hex is not None:
        return parse_hex(args.data_hex, "--data-hex") or b""
    if args.input is not None:
        try:
            with open(args.input, "rb") as f:
                return f.read()
        except OSError as e:
            raise CommandError(f"cannot read {args.input}: {e.strerror}") from e
    return sys.stdin.buffer.read()


def _output(args: argparse.Namespace, data: bytes) -> None:
    payload = (data.hex() + "\n").encode() if args.hex else data
    if args.out is not None:
        from kcm.cli.output_file import write_private

        write_private(args.out, payload)  # a plaintext: into no one else's file
    else:
        sys.stdout.buffer.write(payload)
        sys.stdout.buffer.flush()


def _run_encrypt(args: argparse.Namespace) -> int:
    parameters = _parameters(args)
    iv = parse_hex(args.iv_hex, "--iv-hex")
    aad = parse_hex(args.aad_hex, "--aad-hex")
    data = _input(args)

    def encrypt(session: Session) -> int:
        answer = session.encrypt(args.uid, data, parameters, iv, aad)
        sealed = answer.data or b""
        iv_out = answer.iv_counter_nonce or iv
        if args.json:
            _print_json({"unique_identifier": answer.unique_identifier, "data": sealed.hex(),
                         "iv": iv_out.hex() if iv_out else None,
                         "tag": (answer.authenticated_encryption_tag.hex()
                                 if answer.authenticated_encryption_tag else None)})
            return 0
        _output(args, sealed)
        if answer.iv_counter_nonce:
            print(f"iv {answer.iv_counter_nonce.hex()}", file=sys.stderr)
        if answer.authenticated_encryption_tag:
            print(f"tag {answer.authenticated_encryption_tag.hex()}", file=sys.stderr)
        return 0

    return _kmip(args, encrypt)


def _run_decrypt(args: argparse.Namespace) -> int:
    parameters = _parameters(args)
    iv = parse_hex(args.iv_hex, "--iv-hex")
    tag = parse_hex(args.tag_hex, "--tag-hex")
    aad = parse_hex(args.aad_hex, "--aad-hex")
    data = _input(args)

    def decrypt(session: Session) -> int:
        plain = session.decrypt(args.uid, data, parameters, iv, tag, aad)
        if args.json:
            _print_json({"unique_identifier": args.uid, "data": plain.hex()})
        else:
            _output(args, plain)
        return 0

    return _kmip(args, decrypt)


def _run_query(args: argparse.Namespace) -> int:
    from kcm.kmip.enums import ObjectType, Operation
    from kcm.kmip.labels import enum_label

    def query(session: Session) -> int:
        answer = session.query()
        found = {"operations": [enum_label(Operation, op) for op in answer.operations],
                 "object_types": [enum_label(ObjectType, t) for t in answer.object_types],
                 "vendor_identification": answer.vendor_identification,
                 "server_information": (None if answer.server_information is None
                                        else item_json(answer.server_information))}
        if args.json:
            _print_json(found)
        else:
            for name, value in found.items():
                if value:
                    print(f"{name}: {_text(value)}")
        return 0

    return _kmip(args, query)
