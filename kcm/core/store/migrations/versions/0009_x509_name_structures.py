"""X.509 Certificate Subject and Issuer as the structures KMIP defines.

Releases before this one stored a registered certificate's X.509 Certificate Subject and
X.509 Certificate Issuer attributes as a bare Byte String (the DER name); KMIP 1.4 §3.11,
§3.12 (and 2.x) define each as a Structure of the Subject (Issuer) Distinguished Name, with
any Alternative Names. Each certificate's two attributes are rewritten in that shape (the
name kept as it was), and its revision raised so that no core's cache keeps the old list.
What those releases did not set (X.509 Certificate Identifier, Digital Signature
Algorithm, the public key's algorithm and length) needs the certificate, which is
wrapped under the tenant's key: register the certificate again to have them.

Certificates only (a handful in most inventories): their rows are read by object type.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CERTIFICATE = 0x01  # Object Type Certificate


def upgrade() -> None:
    _rewrite(to_structure=True)


def downgrade() -> None:
    _rewrite(to_structure=False)


def _rewrite(*, to_structure: bool) -> None:
    from kcm.core.attribute_blob import decode_attributes, encode_attributes
    from kcm.kmip.attributes import Attribute
    from kcm.kmip.tags import Tag
    from kcm.ttlv import Item, ItemType

    names = {Tag.X_509_CERTIFICATE_SUBJECT: Tag.SUBJECT_DISTINGUISHED_NAME,
             Tag.X_509_CERTIFICATE_ISSUER: Tag.ISSUER_DISTINGUISHED_NAME}

    def reshaped(attribute: Attribute) -> Attribute:
        field = names.get(attribute.tag)
        value = attribute.value
        if field is None or value is None:
            return attribute
        if to_structure and value.type is ItemType.BYTE_STRING:
            return Attribute(attribute.tag, Item(attribute.tag, ItemType.STRUCTURE, [
                Item(field, ItemType.BYTE_STRING, value.value)]))
        if not to_structure and value.type is ItemType.STRUCTURE:
            name = value.find(field)
            if name is not None:
                return Attribute(attribute.tag, Item(attribute.tag, ItemType.BYTE_STRING,
                                                     name.value))
        return attribute

    connection = op.get_bind()
    objects = sa.table("managed_objects", sa.column("uid", sa.Text()),
                       sa.column("object_type", sa.Integer()),
                       sa.column("attributes", sa.LargeBinary()),
                       sa.column("revision", sa.Integer()))
    rows = connection.execute(sa.select(objects.c.uid, objects.c.attributes)
                              .where(objects.c.object_type == _CERTIFICATE)).all()
    for uid, blob in rows:
        attributes = decode_attributes(blob)
        rewritten = [reshaped(a) for a in attributes]
        if rewritten != attributes:
            connection.execute(sa.update(objects).where(objects.c.uid == uid).values(
                attributes=encode_attributes(rewritten), revision=objects.c.revision + 1))
