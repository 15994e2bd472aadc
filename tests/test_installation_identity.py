"""An installation's identity (``$IMS_HOME/data/installation.id``, docs/operations.md): every archive's
header names the installation that wrote it, and an incremental of another installation
is never taken as a link of this one's chain -- by imsbackup --base, imsverify or a chain
restored in one command -- while a disaster recovery (imsdr) keeps the identity, so the
chain goes on after it.  (adv9 F1: installation c2's -d incremental, and one it wrote
with c1's state file as --base, passed as links of c1's chain: imsverify 0, imsrestore 0
with c2's folders.)"""
from __future__ import annotations

import json
import re
import shutil

import pytest

from asm.archive.reader import ArchiveReader
from asm.config import Config
from asm.errors import EXIT_OK, EXIT_ORDER, EXIT_USAGE
from asm.store import open_store
from tests.helpers import DRIVERS, build, change_mail, make_home, run, state


def _header(path) -> dict:
    with open(path, "rb") as f:
        return ArchiveReader(f).header


def _id(home) -> str | None:
    return Config(str(home)).installation_id()


@pytest.mark.parametrize("driver", DRIVERS)
def test_another_installations_incremental_is_no_link_of_the_chain(tmp_path, driver):
    c1, c2 = tmp_path / "c1", tmp_path / "c2"
    s1 = build(c1, driver, users=3, messages=20)
    build(c2, driver, users=3, messages=20)          # the same users and folders: only the id tells
    assert _id(c1) is None                           # (made by the first backup)
    full = tmp_path / "c1-full.ims"
    run(c1, "imsbackup", "-f", full, "/", check=EXIT_OK)
    one = _id(c1)
    assert re.fullmatch(r"[0-9a-f]{32}", one) and _header(full)["installation"] == one
    assert json.loads((tmp_path / "c1-full.ims.state").read_text())["installation"] == one
    run(c2, "imsbackup", "-f", tmp_path / "c2-full.ims", "/", check=EXIT_OK)
    two = _id(c2)
    assert two != one

    # imsbackup --base with the other installation's state file: refused, nothing written
    forged = tmp_path / "c2-forged.ims"
    p = run(c2, "imsbackup", "-f", forged, "--base", tmp_path / "c1-full.ims.state", "/", text=True)
    assert p.returncode == EXIT_USAGE, p.stderr
    assert p.stderr.count("\n") == 1 and "another installation" in p.stderr and one in p.stderr \
        and "IMS_HOME" in p.stderr, p.stderr
    assert not forged.exists() and not (tmp_path / "c2-forged.ims.state").exists()

    # a -d incremental of c2 after c1's full: imsverify 7, the chain restore 7 and nothing restored
    s2 = open_store(Config(str(c2)))
    change_mail(s2, s2.users("primary"))
    c2_incr = tmp_path / "c2-incr.ims"
    run(c2, "imsbackup", "-f", c2_incr, "-d", "19700102:000000", "/", check=EXIT_OK)
    assert _header(c2_incr)["installation"] == two
    p = run(c1, "imsverify", "-f", full, "-f", c2_incr, text=True)
    assert p.returncode == EXIT_ORDER, p.stderr
    assert "another installation" in p.stderr and str(c2_incr) in p.stderr, p.stderr
    dst = tmp_path / "dst"
    make_home(dst, driver)
    p = run(dst, "imsrestore", "-f", full, "-f", c2_incr, text=True)
    assert p.returncode == EXIT_ORDER and p.stderr.count("\n") == 1, p.stderr
    assert "another installation" in p.stderr and "nothing was restored" in p.stderr, p.stderr
    assert state(open_store(Config(str(dst)))) == {}
    # both installations' archives in one directory: each incremental follows its own full
    d = tmp_path / "both"
    d.mkdir()
    for a in (full, tmp_path / "c2-full.ims", c2_incr):
        shutil.copy(a, d / a.name)
    run(c1, "imsverify", "-f", f"{d}/", check=EXIT_OK)

    # this installation's own chain (by date and by base) is one: verified and restored exact
    change_mail(s1, s1.users("primary"))
    incr = tmp_path / "c1-incr.ims"
    run(c1, "imsbackup", "-f", incr, "--base", tmp_path / "c1-full.ims.state", "/", check=EXIT_OK)
    want = state(s1)
    assert _header(incr)["installation"] == one and _id(c1) == one
    run(c1, "imsverify", "-f", full, "-f", incr, check=EXIT_OK)
    dst2 = tmp_path / "dst2"
    make_home(dst2, driver)
    run(dst2, "imsrestore", "-f", full, "-f", incr, check=EXIT_OK)
    assert state(open_store(Config(str(dst2)))) == want
    # ... and the restore's installation is another one: its own backups name their own id
    run(dst2, "imsbackup", "-f", tmp_path / "dst2.ims", "/", check=EXIT_OK)
    assert _id(dst2) not in (None, one)


def test_a_disaster_recovery_keeps_the_identity_and_the_chain_goes_on(tmp_path):
    """imsdr backs up msg.conf with installation.id; IMS_HOME lost and rebuilt with imsdr
    restore, the next incremental on the old state file is a link of the old chain."""
    home = tmp_path / "ims"
    store = build(home, "classic", users=3, messages=20)
    full = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", full, "/", check=EXIT_OK)
    one = _id(home)
    run(home, "imsdr", "backup", "-f", tmp_path / "dr.tar", check=EXIT_OK)
    change_mail(store, store.users("primary"))
    want = state(store)
    shutil.rmtree(home / "config")                   # the disaster: IMS_HOME is gone
    (home / "data" / "installation.id").unlink()
    run(home, "imsdr", "restore", "-f", tmp_path / "dr.tar", check=EXIT_OK)
    assert _id(home) == one
    incr = tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", incr, "--base", tmp_path / "full.ims.state", "/", check=EXIT_OK)
    assert _header(incr)["installation"] == one
    run(home, "imsverify", "-f", full, "-f", incr, check=EXIT_OK)
    dst = tmp_path / "dst"
    make_home(dst, "classic")
    run(dst, "imsrestore", "-f", full, "-f", incr, check=EXIT_OK)
    assert state(open_store(Config(str(dst)))) == want
    # msg.conf written again from a template (configuration management) keeps it
    conf = home / "config" / "msg.conf"
    conf.write_text(conf.read_text())
    assert _id(home) == one
    # rebuilt by hand instead (no identity): refused with the line that sets it back
    (home / "data" / "installation.id").unlink()
    p = run(home, "imsbackup", "-f", tmp_path / "x.ims", "--base", tmp_path / "full.ims.state", "/", text=True)
    ident = home / "data" / "installation.id"
    assert p.returncode == EXIT_USAGE and f"echo {one} > {ident}" in p.stderr, p.stderr
    ident.write_text(one + "\n")
    run(home, "imsbackup", "-f", tmp_path / "x.ims", "--base", tmp_path / "full.ims.state", "/", check=EXIT_OK)
    # a damaged identity file: every backup refuses, naming it
    ident.write_text("not an identity\n")
    p = run(home, "imsbackup", "-f", tmp_path / "y.ims", "/", text=True)
    assert p.returncode == EXIT_USAGE and str(ident) in p.stderr and "damaged" in p.stderr, p.stderr
    assert not (tmp_path / "y.ims").exists()
