"""reconstruct on an sdbox or mdbox store: Dovecot's index files are the authority.

A dbox store keeps its UIDs, flags and UIDVALIDITY in Dovecot's own index files, which
only Dovecot reads and writes (ims-asm never parses dbox files, asm/store/maildir/dbox.py):
there is no mailbox list, uidlist or index of ims-asm's to rebuild or compare.  So the
check (``-n``) has Dovecot open every mailbox of every login named (``doveadm mailbox
status``; a mailbox it cannot read fails the run, exit 17, naming it) and counts what it
holds; the repair first has Dovecot check its index files against its dbox files and fix
them (``doveadm force-resync``), keeping UIDs and flags.  Witnesses (``-a``, the journal)
are not needed: nothing of ims-asm's is rebuilt.
"""
from __future__ import annotations

from asm.reconstruct import NOTE, Report


class DboxReconstructor:
    def __init__(self, config, report: Report, repair: bool, layout):
        """``repair``: have Dovecot resync before the mailboxes are opened (not with -n
        or --no-resync); nothing else is ever written."""
        from asm.store.maildir.dbox import DboxStore
        self.report = report
        self.repair = repair
        self.location = layout.location
        self.store = DboxStore(config, create=False, layout=layout)
        report.add(NOTE, self.location.text,
                   f"a {self.location.format} store: its UIDs, flags and UIDVALIDITY live in Dovecot's index "
                   f"files, the authority here; " + ("Dovecot resyncs them (doveadm force-resync), then "
                                                     if repair else "") +
                   "every mailbox is opened through doveadm")

    def mailbox_list(self) -> None:
        self.report.add(NOTE, self.location.text, "no mailbox list to rebuild (-m): Dovecot lists a "
                                                  f"{self.location.format} store's mailboxes itself")

    def targets(self, lp, groups, recursive: bool) -> list[tuple[str, str]]:
        """(login, doveadm mailbox mask) for a logical path: a folder with its children
        under -r, a login's INBOX without -r, every folder with -r."""
        from asm.logical import PathError
        from asm.store.base import NoSuchUser
        parts = self.store.partitions()
        if lp.partition is not None and lp.partition not in parts:
            raise PathError(f"{lp}: no partition {lp.partition!r} (partitions: {', '.join(parts)})")
        if lp.user is not None:
            if lp.user not in self.store.users("primary"):
                raise PathError(f"{lp}: no user {lp.user!r} in the store") from NoSuchUser(lp.user)
            users = [lp.user]
        else:
            users = [u for p in ([lp.partition] if lp.partition else parts)
                     for u in self.store.users(p) if lp.covers_user(p, u, groups)]
        out = []
        for user in users:
            if lp.folder is not None:
                out.append((user, lp.folder))
                if recursive:
                    out.append((user, lp.folder + "/*"))
            else:
                out.append((user, "*" if recursive else "INBOX"))
        return out

    def check(self, targets: list[tuple[str, str]]) -> None:
        seen: set = set()
        for user in dict.fromkeys(u for u, _ in targets):
            masks = [m for u, m in targets if u == user]
            if self.repair:
                for mask in masks:
                    self.store.force_resync(user, mask)
            self.report.users += 1
            for mask in masks:
                for folder, (messages, _uidvalidity, _uidnext) in sorted(self.store.account_status(user, mask).items()):
                    if (user, folder) in seen:
                        continue
                    seen.add((user, folder))
                    self.report.folders += 1
                    self.report.messages += messages
                    self.report.progress()
