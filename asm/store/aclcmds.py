"""The ``doveadm acl`` commands that make a folder's access control list (Dovecot's
``dovecot-acl``, lines ``[-]identifier rights``) what another one says: what a restore
that could not write an ACL (its lock held) tells the administrator to run.

``doveadm acl set -u USER MAILBOX ID RIGHT...`` replaces one identifier's rights, the
positive and the negative ones (``-RIGHT``) at once, by their names (acl-rights.c,
``acl_rights_update_import``); ``doveadm acl delete -u USER MAILBOX ID`` removes one
identifier's entry.  So the commands are one ``delete`` per identifier the folder has
that the wanted ACL lacks, and one ``set`` per identifier the wanted ACL has, every
word shell-quoted, ``--`` before the mailbox (doveadm would take a negative right
``-write`` for an option: "set: invalid option -- 'w'").
"""
from __future__ import annotations

import shlex

#: IMAP ACL letters (RFC 4314; c and d the obsolete RFC 2086 ones) as doveadm names them
RIGHT_NAMES = {
    "l": ("lookup",), "r": ("read",), "w": ("write",), "s": ("write-seen",),
    "t": ("write-deleted",), "i": ("insert",), "p": ("post",), "e": ("expunge",),
    "k": ("create",), "x": ("delete",), "a": ("admin",),
    "c": ("create",), "d": ("delete", "expunge", "write-deleted"),
}


def entries(text: str) -> dict[str, list[str]]:
    """{identifier: its rights as doveadm names them, negative ones as ``-name``} of an
    ACL file's text, in the order the identifiers first appear."""
    out: dict[str, list[str]] = {}
    for line in (text or "").split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ident, _, rights = line.partition(" ")
        neg = ident.startswith("-")
        ident = ident[1:] if neg else ident
        got = out.setdefault(ident, [])
        for word in rights.split():
            names = (word,) if word.startswith(":") else \
                tuple(n for c in word for n in RIGHT_NAMES.get(c, ()))
            for name in names:
                name = f"-{name}" if neg else name
                if name not in got:
                    got.append(name)
    return out


def doveadm_acl_commands(user: str, folder: str, want: str, have: str) -> list[str]:
    """The shell commands that give ``user``'s ``folder`` the ACL ``want`` ("" for
    none) where it has ``have`` now."""
    head = ["doveadm", "acl"]
    # ("--": a negative right, -write, or a folder named -x, is no option to doveadm)
    where = ["-u", user, "--", folder]
    wanted, present = entries(want), entries(have)
    cmds = [head + ["delete"] + where + [ident] for ident in present if ident not in wanted]
    cmds += [head + ["set"] + where + [ident] + rights for ident, rights in wanted.items() if rights]
    return [" ".join(shlex.quote(w) for w in cmd) for cmd in cmds]
