"""The disaster-recovery runbook on a virtual-domain store (`%d/%n`) whose logins keep
files in their homes (``mail_attribute_dict = file:%h/dovecot-attributes``: IMAP
METADATA, mail_crypt's per-user keys), against a real Dovecot.

Step 3 (``imsdr restore``) runs before the archives, into an empty partition: the
directories it makes for a login's ``dovecot-attributes`` (the domain's, the login's)
and the file itself must belong to ``store.owner``, with Dovecot's mode, whatever uid
the old machine recorded.  Made as root, the domain directory stopped Dovecot from
making any new login's directory in that domain (LMTP 451) while every step exited 0;
with the old machine's uid kept, Dovecot could not read the login's attributes.
"""
from __future__ import annotations

import imaplib
import os
import shutil
import stat

from tests.dovecot_lab import dovecot_lab, message
from tests.helpers import make_home, run

EXTRA = "mail_attribute_dict = file:%h/dovecot-attributes\nimap_metadata = yes"
OLD_UID = 4242          # the mail user's uid on the machine that died


def metadata(lab, login: str, value: str | None = None) -> tuple[str, list]:
    with lab.imap(login) as c:
        imaplib.Commands.setdefault("SETMETADATA", ("AUTH", "SELECTED"))
        imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))
        if value is not None:
            c.conn._simple_command("SETMETADATA", '""', f'(/private/vendor/ims "{value}")')
        typ, _ = c.conn._simple_command("GETMETADATA", '""', "/private/vendor/ims")
        return typ, c.conn._untagged_response(typ, [], "METADATA")[1]


def test_the_runbook_gives_a_logins_home_files_to_the_store_owner(tmp_path):
    with dovecot_lab("vdomain", extra=EXTRA) as lab:
        home, backup = tmp_path / "ims", tmp_path / "backup"
        backup.mkdir()
        make_home(home, "maildir", **{"store.owner": lab.mail_user, "dovecot.config": lab.conf,
                                      "store.mail_location": "doveconf"})
        login = "alice@example.com"
        lab.deliver(lab.logins, message("before the disaster"))
        assert metadata(lab, login, "secret-1")[0] == "OK"
        attrs = os.path.join(lab.doveadm("user", "-f", "home", login).stdout.decode().strip(),
                             "dovecot-attributes")
        lab.stop()
        os.chown(attrs, OLD_UID, OLD_UID)          # as the old machine's mail user had it
        run(home, "imsdr", "backup", "-f", backup / "dr-1.tar", check=0)
        run(home, "imsbackup", "-f", backup / "full-1.ims", "/", check=0)

        # the disk and IMS_HOME are gone; the runbook, steps 2 to 4a
        shutil.rmtree(lab.store)
        shutil.rmtree(home)
        os.mkdir(lab.store, 0o755)
        os.chown(lab.store, lab.uid, lab.gid)
        run(home, "imsdr", "restore", "-f", backup / "dr-1.tar", check=0)
        run(home, "imsrestore", "-f", backup / "full-1.ims", check=0)

        domain = os.path.join(lab.store, "example.com")
        for d in (domain, os.path.dirname(attrs)):
            st = os.stat(d)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (lab.uid, lab.gid, 0o700), d
        st = os.stat(attrs)
        assert (st.st_uid, st.st_gid) == (lab.uid, lab.gid)

        lab.start()
        # Dovecot reads the login's attributes again ...
        typ, data = metadata(lab, login)
        assert typ == "OK" and b"secret-1" in repr(data).encode(), data
        # ... and makes a new login's directory in the restored domain
        lab.add_user("newbie@example.com")
        lab.deliver(["newbie@example.com"], message("welcome"))
        assert len(lab.client_state("newbie@example.com")["INBOX"].messages) == 1
