"""The ``maildir`` store driver: Dovecot's Maildir++ exactly as Dovecot 2.3 writes it.

Layout (see docs/maildir.md)::

    <partition>/<user>/                 the user's home (Dovecot: home=<store>/%u)
        .ims-hold, .ims-queue/           delivery hold marker and queue (ours)
        Maildir/                         INBOX: cur/ new/ tmp/ dovecot-uidlist ...
            .Work.2023/                  folder "Work/2023" (levels in modified UTF-7)
            subscriptions                "V\\t2", "", then names with TAB between levels
            dovecot-keywords             "<index> <keyword>": letter a+index in file names

Message files are ``<secs>.M<usecs>P<pid>...<host>,S=<size>:2,<flags>``; the leading
epoch is the stored (delivery) date, the mtime is INTERNALDATE, the letters after
``:2,`` are the flags (D F R S T, then keyword letters a..z).  UIDs live in
``dovecot-uidlist`` (version 3), which every writer changes only while holding the
``dovecot-uidlist.lock`` dotlock; this driver's folder lock *is* that dotlock, so
Dovecot and this driver exclude each other.

Modules: :mod:`.uidlist`, :mod:`.dotlock`, :mod:`.names` (folder directories, file
names, flag letters, keywords), :mod:`.subscriptions`, :mod:`.store` (the driver).
"""
from asm.hookspecs import hookimpl
from asm.store.maildir.dotlock import LOCK_SUFFIX, STALE_LOCK_SECS, TOUCH_LOCK_SECS
from asm.store.maildir.names import (
    FLAG_LETTER, KEYWORDS, LETTER_FLAG, MAX_KEYWORDS, folder_dirname, folder_from_dirname,
    level_to_disk, split_name, stored_from_name,
)
from asm.store.maildir.store import HOLD_MARKER, INDEX_FILES, LIST_INDEX_FILES, QUEUE_DIR, MaildirStore
from asm.store.maildir.subscriptions import SUBSCRIPTIONS
from asm.store.maildir.uidlist import UIDLIST, Uidlist, read_uidlist, read_uidlist_header

__all__ = [
    "FLAG_LETTER", "HOLD_MARKER", "INDEX_FILES", "KEYWORDS", "LETTER_FLAG", "LIST_INDEX_FILES",
    "LOCK_SUFFIX", "MAX_KEYWORDS", "MaildirStore", "QUEUE_DIR", "STALE_LOCK_SECS", "SUBSCRIPTIONS",
    "TOUCH_LOCK_SECS", "UIDLIST", "Uidlist", "folder_dirname", "folder_from_dirname", "ims_store_drivers",
    "level_to_disk", "read_uidlist", "read_uidlist_header", "split_name", "stored_from_name",
]


def open_maildir_store(config, create: bool = True):
    """The maildir driver: Maildir stores, and sdbox/mdbox ones through doveadm
    (store.mail_location names the format)."""
    from asm.store.maildir.dbox import DboxStore
    from asm.store.maildir.store import open_layout
    layout = open_layout(config, dbox=True)
    if layout is not None and not layout.location.is_maildir:
        return DboxStore(config, create, layout=layout)
    return MaildirStore(config, create, layout=layout or False)


@hookimpl
def ims_store_drivers():
    return {"maildir": open_maildir_store}
