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

# What the package offers, from the module that holds it.  Imported on first use (PEP
# 562): every command loads this plugin, and a store of another driver (or a command
# that opens no store) must not pay for this driver's modules.
_EXPORTS = {
    "asm.store.maildir.dotlock": ("LOCK_SUFFIX", "STALE_LOCK_SECS", "TOUCH_LOCK_SECS"),
    "asm.store.maildir.names": ("FLAG_LETTER", "KEYWORDS", "LETTER_FLAG", "MAX_KEYWORDS", "folder_dirname",
                                "folder_from_dirname", "level_to_disk", "split_name", "stored_from_name"),
    "asm.store.maildir.store": ("HOLD_MARKER", "INDEX_FILES", "LIST_INDEX_FILES", "QUEUE_DIR", "MaildirStore"),
    "asm.store.maildir.subscriptions": ("SUBSCRIPTIONS",),
    "asm.store.maildir.uidlist": ("UIDLIST", "Uidlist", "read_uidlist", "read_uidlist_header"),
}
_SUBMODULES = ("dbox", "dotlock", "doveadm", "holdfile", "names", "store", "subscriptions", "uidlist")
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted([*_WHERE, "ims_store_drivers"])


def __getattr__(name: str):
    import importlib
    module = _WHERE.get(name)
    if module is None:
        if name in _SUBMODULES:                  # asm.store.maildir.store, ... as attributes
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


def open_maildir_store(config, create: bool = True):
    """The maildir driver: Maildir stores, and sdbox/mdbox ones through doveadm
    (store.mail_location names the format)."""
    from asm.store.maildir.store import MaildirStore, open_layout
    layout = open_layout(config, dbox=True)
    if layout is not None and not layout.location.is_maildir:
        from asm.store.maildir.dbox import DboxStore
        return DboxStore(config, create, layout=layout)
    return MaildirStore(config, create, layout=layout or False)


@hookimpl
def ims_store_drivers():
    return {"maildir": open_maildir_store}
