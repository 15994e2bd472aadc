"""Backup groups: ``backup-groups.conf`` (``name=regex`` per line).

A user belongs to the first group whose expression matches the whole user ID; the
predefined group ``user`` holds every user and needs no configuration.  Groups are
virtual: they do not follow the store's directories, they only split the users of a
partition for parallel backups.  The expressions are UNIX (POSIX extended) regular
expressions, as the classic tools read them: :mod:`asm.posix_ere` parses them and
matches without backtracking, so no expression can hang a backup.
"""
from __future__ import annotations

import re

from asm import lazy
from asm.errors import EXIT_USAGE, ImsError

posix_ere = lazy.module("asm.posix_ere")    # only a groups file with a group in it (startup time)

PREDEFINED = "user"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class GroupsError(ImsError):
    """A bad line in backup-groups.conf; the message names file and line."""

    status = EXIT_USAGE


class Groups:
    def __init__(self, groups: list[tuple[str, posix_ere.Pattern]] | None = None):
        self.groups = list(groups or [])
        self._of: dict[str, str] = {}

    @classmethod
    def load(cls, path: str) -> "Groups":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return cls()
        except IsADirectoryError:
            raise GroupsError(f"{path} is a directory, not a file: remove it or move it away") from None
        except OSError as exc:
            raise GroupsError(f"cannot read {path}: {exc.strerror}") from None
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]       # a byte-order mark (an editor's UTF-8): not part of the first name
        text = data.decode("utf-8", "surrogateescape")   # user IDs are any bytes: so are patterns
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, path: str = "backup-groups.conf") -> "Groups":
        out: list[tuple[str, posix_ere.Pattern]] = []
        seen: dict[str, int] = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            name, eq, expr = s.partition("=")
            name, expr = name.strip(), expr.strip()
            where = f"{path}:{lineno}"
            if not eq:
                raise GroupsError(f"{where}: expected 'name=regex', found {s!r}")
            if not _NAME_RE.match(name):
                raise GroupsError(f"{where}: bad group name {name!r}: use letters, digits, '_', '.', '-'")
            if name == PREDEFINED:
                raise GroupsError(f"{where}: group name 'user' is predefined (it holds every user); pick another name")
            if name in seen:
                raise GroupsError(f"{where}: group {name!r} is already defined on line {seen[name]}")
            if not expr:
                raise GroupsError(f"{where}: group {name!r} has an empty expression")
            try:
                rx = posix_ere.compile(expr)
            except posix_ere.EreError as exc:
                raise GroupsError(f"{where}: bad regular expression {expr!r} for group {name!r}: {exc} "
                                  f"(backup groups use POSIX extended expressions, as grep -E)") from None
            seen[name] = lineno
            out.append((name, rx))
        return cls(out)

    def names(self) -> list[str]:
        return [n for n, _ in self.groups] + [PREDEFINED]

    def is_group(self, name: str) -> bool:
        return name == PREDEFINED or any(n == name for n, _ in self.groups)

    def group_of(self, user: str) -> str:
        """The first configured group matching the whole user ID, else ``user``."""
        hit = self._of.get(user)
        if hit is None:
            hit = PREDEFINED
            for name, rx in self.groups:
                if rx.fullmatch(user):
                    hit = name
                    break
            if len(self._of) < 1_000_000:
                self._of[user] = hit
        return hit

    def member(self, user: str, group: str) -> bool:
        return group == PREDEFINED or self.group_of(user) == group

    def members(self, group: str, users) -> list[str]:
        return [u for u in users if self.member(u, group)]
