"""PyKMIP's known failures, told apart from any other.

An ``xfail(raises=...)`` mark matches by ``isinstance``: ``raises=Exception`` or
``raises=ValueError`` would also pass a test that fails for some other reason. Inside
:func:`known_pykmip_bug`, PyKMIP's exception of exactly the class named, whose message holds
the text named, is raised again as :class:`KnownPyKmipBug`; any other exception goes
through as it is. Mark the test ``xfail(strict=True, raises=KnownPyKmipBug, reason=...)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class KnownPyKmipBug(Exception):
    """PyKMIP failed in the one way the test expects (the original is its ``__cause__``)."""


@contextmanager
def known_pykmip_bug(kind: type[BaseException], message: str) -> Iterator[None]:
    """Raise :class:`KnownPyKmipBug` for an exception of class ``kind`` exactly (not a
    subclass) whose text contains ``message``; let any other exception through."""
    try:
        yield
    except BaseException as error:
        if type(error) is kind and message in str(error):
            name = f"{kind.__module__}.{kind.__qualname__}"
            raise KnownPyKmipBug(f"{name}: {error}") from error
        raise
