"""A SQLite database file is used by one name only.

SQLite names a database's ``-wal`` and ``-shm`` files after the name it was opened by, and
kcm-core its lock file (:mod:`kcm.core.sqlite_owner`): a second name of the same file (a
hard link) has a WAL, a shared memory and a lock of its own. A core on each name then
serves the one database, and their two WALs corrupt it (SQLite's "How To Corrupt An SQLite
Database File", on hard links); a ``kcm`` command or a backup on the other name reads the
database without the commits still in the first name's WAL. So a database file of more than
one link is refused where it is opened: by kcm-core as it starts, by every engine
(:func:`kcm.core.store.engine.open_engine`: the store of kcm-core and of each ``kcm``
command, schema migrations, ``kcm config check``) and by ``kcm core backup``. A symbolic
link is no second name: SQLite and the lock resolve it to the file's real path.
"""

from __future__ import annotations

import os


class SqliteFileLinked(ValueError):
    """The SQLite database file has more than one name (hard links); the message says what
    to do."""


def linked_refusal(path: str) -> str | None:
    """Why the SQLite database file at ``path`` may not be used: it has more than one hard
    link (None: one, or there is no file yet)."""
    try:
        links = os.stat(path).st_nlink
    except OSError:
        return None
    if links <= 1:
        return None
    real = os.path.realpath(path)
    # (the advice first and the path last: a long path is what the CLI's one line cuts)
    return (f"the SQLite database file has {links} names (hard links), and SQLite keeps a "
            "WAL per name, which corrupts it: with kcm-core stopped, remove the other names "
            f"(find -samefile) or replace it by a copy: {real}")


def refuse_linked(path: str) -> None:
    """:class:`SqliteFileLinked` if the SQLite database file at ``path`` has more than one
    name."""
    refusal = linked_refusal(path)
    if refusal is not None:
        raise SqliteFileLinked(refusal)
