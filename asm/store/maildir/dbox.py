"""sdbox and mdbox stores, through ``doveadm backup`` and a temporary Maildir.

ims-asm never parses dbox files.  A login's dbox account is copied to a Maildir
(``doveadm -c CONF backup -u LOGIN maildir:WORK/LOGIN/Maildir``) the first time a command
reads it, and the Maildir driver reads that copy; a restore builds a new login's mail
as a Maildir and gives it to Dovecot at the end of its batch (``doveadm -c CONF -o
mail_location=maildir:WORK/LOGIN/Maildir backup -u LOGIN <the login's dbox location>``).
``doveadm backup`` keeps UIDVALIDITY, UIDNEXT, UIDs, flags, keywords, INTERNALDATE and
GUIDs in both directions (docs/dovecot.md); ``doveadm sync -1`` is never used.

WORK is ``<store>/.ims-dbox-work.<host>.<pid>``, on the store's disk and reachable by the
mail user; it goes when the process ends.  A restore into a login that already has dbox
mail is refused (the copy back would drop what was delivered meanwhile): restore it
into a new login (-m) or after deleting the account's mail.
"""
from __future__ import annotations

import atexit
import os
import shutil

from asm.config import Config
from asm.locks import pid_alive
from asm.store import layout as layout_mod
from asm.store.base import NoSuchUser, StoreError, UserExists, check_user_name
from asm.store.maildir.store import MaildirStore, fixed_prefix, open_layout

_WRITES = ("create_folder", "delete_folder", "set_folder", "append", "set_flags", "expunge",
           "hold_deliveries", "release_deliveries", "delete_user")


class DboxStore(MaildirStore):
    """A Dovecot sdbox/mdbox store seen through temporary Maildir copies."""

    unlisted_hint = "the store is read through doveadm backup (sdbox/mdbox)"

    def __init__(self, config: Config, create: bool = True, layout=None):
        dbox = layout or open_layout(config, dbox=True)
        super().__init__(config, create, layout=False)
        self._dbox = dbox
        self._dv = self._doveadm()
        if self._dv is None:
            raise layout_mod.LayoutError(
                f"mail_location {dbox.location.text!r}: sdbox and mdbox are read and written "
                f"through doveadm, which needs Dovecot's configuration: msconfig set "
                f"dovecot.config /etc/dovecot/dovecot.conf (and install doveadm)")
        self._prefix = fixed_prefix(dbox.root_template())
        self._work = os.path.join(self._prefix, f".ims-dbox-work.{self._hostname}.{self._pid}")
        self._parts = {"primary": self._work}
        self._exported: set[str] = set()          # logins copied from dbox (read only)
        self._created: set[str] = set()           # logins this process builds (given back)

    # -- the dbox side -------------------------------------------------------------------
    def _ensure_work(self) -> None:
        if not os.path.isdir(self._work):
            self._clean_stale_work()
            os.mkdir(self._work, 0o700)
            owner = self._owner_for(self._prefix)
            self._chown(self._work, owner)
            atexit.register(shutil.rmtree, self._work, True)

    def _clean_stale_work(self) -> None:
        """Work directories of this host's processes that were killed before their end."""
        prefix = f".ims-dbox-work.{self._hostname}."
        try:
            names = [n for n in os.listdir(self._prefix) if n.startswith(prefix)]
        except OSError:
            return
        for n in names:
            pid = n[len(prefix):]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(os.path.join(self._prefix, n), ignore_errors=True)

    def _dbox_root(self, user: str) -> str:
        try:
            return self._dbox.for_login(check_user_name(user)).root
        except layout_mod.LayoutError as exc:
            raise StoreError(f"user {user!r}: {exc}") from None

    def _maildir(self, user: str) -> str:
        return os.path.join(self._work, user, "Maildir")

    def _export(self, user: str) -> None:
        """Copy the login's account to WORK; the copies of the logins read before go
        (a backup reads one login after the other: WORK holds one account at a time)."""
        self._ensure_work()
        with self._mutex:
            busy = {u for (u, _f) in self._held}
        for other in sorted(self._exported - self._created - busy):
            shutil.rmtree(os.path.join(self._work, other), ignore_errors=True)
            self._exported.discard(other)
        self._dv.run(user, "backup", f"maildir:{self._maildir(user)}")
        self._exported.add(user)

    def _location_of(self, user: str) -> str:
        """The login's dbox location, every variable and ~ expanded (doveadm's target)."""
        ul = self._dbox.for_login(user)
        loc = self._dbox.location
        text = f"{loc.format}:{ul.root}"
        if loc.index is not None:
            text += f":INDEX={ul.index_root}" if ul.index_root else ":INDEX=MEMORY"
        if loc.control is not None:
            text += f":CONTROL={ul.control_root}"
        for key, value in loc.options:
            if key not in ("INDEX", "CONTROL", "INBOX"):
                text += f":{key}={layout_mod.expand(value, user, ul.home)}" if value else f":{key}"
        return text

    def _give_back(self, user: str) -> None:
        self._dv.run(user, "backup", self._location_of(user),
                     options=[f"mail_location=maildir:{self._maildir(user)}"])

    # -- the store API ---------------------------------------------------------------------
    def check_partition(self, partition: str, writing: bool = False) -> bool:
        from asm.store.partitions import check_partition_dir
        self.partition_path(partition)
        return check_partition_dir(partition, self._prefix, True, writing)

    def sync_dirs(self) -> list[str]:
        return [self._prefix]

    def users(self, partition: str) -> list[str]:
        self.partition_path(partition)
        if not self.check_partition(partition):
            return []
        found = set(self._dbox.logins()) | self._created
        return sorted(u for u in found if not u.startswith(".ims-"))

    def unlisted_users(self, partition: str):
        return []

    def unlisted_folders(self, user: str):
        return []

    def user_partition(self, user: str) -> str:
        check_user_name(user)
        if user in self._exported or user in self._created:
            return "primary"
        if os.path.isdir(self._dbox_root(user)):
            self._export(user)
            return "primary"
        raise NoSuchUser(user)

    def create_user(self, user: str, partition: str = "primary", uidvalidity: int | None = None) -> None:
        check_user_name(user)
        if self.exists(user):
            raise UserExists(user)
        self._ensure_work()
        super().create_user(user, partition, uidvalidity)
        self._created.add(user)

    def exists(self, user: str, folder: str | None = None) -> bool:
        if folder is None and user not in self._created and user not in self._exported:
            return os.path.isdir(self._dbox_root(user))
        return super().exists(user, folder)

    def sync(self) -> None:
        super().sync()
        for user in sorted(self._created):
            self._give_back(user)


def _writable(name: str):
    inner = getattr(MaildirStore, name)

    def method(self, user, *args, **kwargs):
        if user in self._exported and user not in self._created:
            raise StoreError(f"{user} has dbox mail already: ims-asm restores a dbox account "
                             f"only into a login without mail (restore it under another login "
                             f"with -m, or delete the account's mail first)")
        return inner(self, user, *args, **kwargs)
    method.__name__ = name
    method.__doc__ = inner.__doc__
    return method


for _name in _WRITES:
    setattr(DboxStore, _name, _writable(_name))
