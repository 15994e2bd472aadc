"""With Dovecot stopped, ims-asm reads the userdbs' passwd-files itself
(asm.store.layout.userdb_from_files) to find the logins whose own ``mail=`` or ``home=``
puts their mail outside the template: a cold backup must name exactly the logins a warm
one names.  Tested differentially against a real Dovecot 2.3: for each configuration
(line shapes Dovecot takes or refuses, the old passwd-file format, result_success =
continue-ok, a %d passwd-file before a fixed one, a static userdb first, default and
override fields, two files, a '%%' path, %variables in the fields), the cold reading
must give the same logins, each with the same home and mail, as the running Dovecot's
auth-userdb listing and lookups (asm.store.layout.userdb_users) -- and, for a few, as
``doveadm user``.

(An adversarial check found five configurations where a cold backup exited 0 without
a login the running Dovecot keeps elsewhere, and six line shapes it took for logins
Dovecot refuses.)"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from asm.store import layout as L
from tests.dovecot_lab import (CONF, DOVEADM, DOVECOT, MAIL_USER, _wait_gone, ensure_mail_user, free_ports,
                               require_lab)


def _udb(driver: str, args: str, extra: str = "") -> str:
    return f"userdb {{\n  driver = {driver}\n  args = {args}\n{extra}}}\n"


def _cases(d: str) -> list[tuple[str, str, dict]]:
    home = f"{d}/home"
    df = f"  default_fields = uid={MAIL_USER} gid={MAIL_USER} home={home}/%u\n"
    one = _udb("passwd-file", f"username_format=%u {d}/users", df)
    return [
        ("line shapes", one, {"users": (
            "# comment\n\n"
            "alice:{PLAIN}a::::::\r\n"
            "bob:{PLAIN}b:::::::userdb_mail=maildir:/else/%u/Maildir:INDEX=/idx/%u\r\n"
            "carol:{PLAIN}c:1000:1000::/home/oldcarol:::maildir:/old/carol\n"        # old format
            "dave:{PLAIN}d:1000:0::/home/dave::\n"                                     # gid 0
            "erin:{PLAIN}e:00:1000::/home/erin::\n"                                    # uid 0
            "frank:{PLAIN}f:nosuchuser:1000::/home/frank::\n"
            f"gina:{{PLAIN}}g:{MAIL_USER}:{MAIL_USER}::/home/gina::\n"
            "hank:{PLAIN}h::::/home/hank1::userdb_home=/home/hank2\n"
            "hank:{PLAIN}h::::/home/hankdup::\n"                                       # twice
            "ivy:{PLAIN}i:::::: mail=maildir:/passdbonly/ivy\n"
            "Jack:{PLAIN}j::::/home/Jack::\n"                                          # %Lu
            "kim:{PLAIN}k:1000\n"                                                      # no gid
            " lee:{PLAIN}l::::/home/lee::\n"
            "mo:{PLAIN}m::::/home/mo::userdb_mail=maildir:~/M\tuserdb_quota=1\n"      # a TAB
            "ned:{PLAIN}n::::::  userdb_mail=maildir:/x/ned  \n"
            "oz:{PLAIN}o:0:0::/home/oz::\n"
            "pat:{PLAIN}p:1001:1001::/home/pat:/bin/sh:userdb_home=\n")}),
        ("continue-ok", _udb("passwd-file", f"username_format=%u {d}/users", df + "  result_success = continue-ok\n")
         + _udb("passwd-file", f"username_format=%u {d}/users2"),
         {"users": "alice:{PLAIN}a::::::\ncarol:{PLAIN}c::::::\n",
          "users2": "carol:{PLAIN}c::::::userdb_mail=maildir:/else/carol/Maildir\n"}),
        ("a %d file first", _udb("passwd-file", f"username_format=%u {d}/users.%d",
                                 f"  default_fields = uid={MAIL_USER} gid={MAIL_USER}\n")
         + _udb("passwd-file", f"username_format=%u {d}/users", df),
         {"users": "alice@example.com:{PLAIN}a::::::\ncarol@example.com:{PLAIN}c::::::\n",
          "users.example.com": "carol@example.com:{PLAIN}c::::::userdb_mail=maildir:/else/carol/Maildir\n"}),
        ("static first", _udb("static", f"uid={MAIL_USER} gid={MAIL_USER} home={home}/%u allow_all_users=yes")
         + _udb("passwd-file", f"username_format=%u {d}/users", df),
         {"users": "alice:{PLAIN}a::::::\ncarol:{PLAIN}c::::::userdb_mail=maildir:/else/carol/Maildir\n"}),
        ("override and default fields", _udb("passwd-file", f"username_format=%u {d}/users",
                                             df + f"  override_fields = home={home}/x/%n\n"),
         {"users": "alice:{PLAIN}a::::/home/alice::\ncarol:{PLAIN}c::::::userdb_home=/home/carol\n"}),
        ("two files", _udb("passwd-file", f"{d}/users", df) + _udb("passwd-file", f"{d}/users2", df),
         {"users": "alice:{PLAIN}a::::::\n",
          "users2": "carol:{PLAIN}c::::/else/carol::\nalice:{PLAIN}a::::/else/alice::\n"}),
        ("a '%%' path", _udb("passwd-file", f"{d}/users%%1", df),
         {"users%1": "carol:{PLAIN}c::::/else/carol::\n", "users%%1": "carol:{PLAIN}c::::/else/carolB::\n"}),
        ("%variables", one,
         {"users": "carol@ex.org:{PLAIN}c::::::userdb_mail=maildir:/else/%d/%n\n"
                   "bob@ex.org:{PLAIN}b::::/else/%u::\n"
                   "dan@ex.org:{PLAIN}d::::::userdb_mail=maildir:%h/M userdb_home=/else/dan\n"}),
    ]


class _Dovecot:
    """A Dovecot of this configuration (auth only matters here), stopped by its PID."""

    def __init__(self, d: str, userdbs: str):
        self.d, self.run = d, os.path.join(d, "run")
        port, lport = free_ports(2)
        self.conf = os.path.join(d, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(CONF.format(layout="cold", d=d, port=port, lport=lport, run=self.run,
                                mail_location=f"maildir:{d}/mail/%u/Maildir", user=MAIL_USER,
                                mail_plugins="", userdb=userdbs, plugin="", extra=""))

    def __enter__(self):
        # (its output to a file: the daemon's children keep a pipe open for good)
        err = os.path.join(self.d, "start.err")
        with open(err, "w") as f:
            p = subprocess.run([DOVECOT, "-c", self.conf], stdin=subprocess.DEVNULL, stdout=f, stderr=f)
        with open(err) as f:
            assert p.returncode == 0, f.read()
        deadline = time.monotonic() + 15
        while not os.path.exists(os.path.join(self.run, "auth-userdb")):
            assert time.monotonic() < deadline, "Dovecot's auth-userdb socket never came"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        with open(os.path.join(self.run, "master.pid")) as f:
            pid = int(f.read())
        os.kill(pid, signal.SIGTERM)
        _wait_gone(pid)


def _shown(fields: dict | None):
    return None if fields is None else (fields.get("home") or None, fields.get("mail") or None)


@pytest.mark.parametrize("case", range(8))
def test_a_cold_reading_of_the_userdbs_gives_what_the_running_dovecot_gives(case):
    require_lab()
    ensure_mail_user()
    # (Dovecot's auth reads the files as its own user: not under pytest's 0700 tmp_path)
    d = tempfile.mkdtemp(prefix="ims-cold-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.chmod(d, 0o755)
    os.makedirs(d + "/mail")
    os.makedirs(d + "/state")
    name, userdbs, files = _cases(d)[case]
    for fn, text in {"users": "", **files}.items():
        with open(os.path.join(d, fn), "w") as f:
            f.write(text)
    try:
        _compare(d, name, userdbs)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _compare(d: str, name: str, userdbs: str) -> None:
    with _Dovecot(d, userdbs) as dv:
        sl = L.from_doveconf(dv.conf)
        assert sl.userdb_socket, name
        # (the auth process starts on the first connection: its first listing may come
        # before it has read the files)
        deadline = time.monotonic() + 15
        while True:
            warm = L.userdb_users(sl.userdb_socket)
            if warm is not None and warm[0] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert warm is not None and warm[0], name
        cold, why = L.userdb_from_files(sl.userdb_text)
        assert why == "" and cold is not None, (name, why)
        want = {u: _shown(f) for u, f in warm[0].items()}
        got = {u: _shown(cold.get(u)) for u in set(cold) | set(want)}
        assert got == want, name
        # and what doveadm user says, for the logins the files name
        for login in list(want)[:4]:
            p = subprocess.run([DOVEADM, "-c", dv.conf, "user", "-f", "home", login],
                               capture_output=True, text=True)
            assert p.returncode == 0 and p.stdout.strip() == (want[login][0] or ""), (name, login, p)
