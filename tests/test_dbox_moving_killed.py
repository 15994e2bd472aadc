"""A restore killed while it moves a dbox account's swapped folders aside, run again.

The incremental's restore gives an sdbox/mdbox account's folders the names the copy has
their mailbox GUIDs under (DboxStore._move_guids): A and B swapped between the full and
the incremental, one of them goes aside as ``ims-moving-PID-N`` for a moment.  Killed
(SIGKILL) just after that rename, the account keeps ``ims-moving-PID-N`` (an IMAP client
lists it) and no A; the same command run again must end as a run that was not killed:
the folders, GUIDs, UIDs and flags the archive has, and no ``ims-moving-`` folder.
Before, the run again copied ``ims-moving-PID-N`` as a folder of the account's own and
left it there, exit 0.  The kill is deterministic: a ``doveadm`` first on PATH runs the
real one, then SIGKILLs its parent (imsrestore) once it has renamed a folder aside.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.dovecot_lab import DOVEADM, lab_fixture, message
from tests.helpers import run
from tests.test_chain_archive_by_archive import view, wipe
from tests.test_dovecot_layouts import configure

lab = lab_fixture(params=["sdbox", "mdbox"], scope="function")


def killing_doveadm(tmp_path, later: int = 0) -> dict:
    """The environment of a run whose ``doveadm mailbox rename X ims-moving-...`` (and
    ``later`` renames after it) is done by Dovecot's doveadm, then imsrestore (its
    parent) is SIGKILLed."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    count = tmp_path / "renames"
    (bindir / "doveadm").write_text(
        "#!/bin/sh\n"
        'case "$*" in *"mailbox rename "*" ims-moving-"*) echo 0 > ' f"{count};;\nesac\n"
        f'case "$*" in *"mailbox rename "*) if [ -f {count} ]; then\n'
        f'  n=$(cat {count}); echo $((n + 1)) > {count}\n'
        f'  if [ "$n" -ge {later} ]; then {DOVEADM} "$@"; rc=$?; kill -9 $PPID; exit $rc; fi\n'
        "fi;;\nesac\n"
        f'exec {DOVEADM} "$@"\n')
    os.chmod(bindir / "doveadm", 0o755)
    return {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


# (the folders made, then the client's renames between the full and the incremental)
SCENARIOS = {
    # A and B swapped: A goes aside, B -> A, aside -> B
    "swap": (("A", "B", "C"), (("A", "T"), ("B", "A"), ("T", "B"))),
    # P (with its child P/k) -> Q -> R -> P: P goes aside with P/k
    "cycle": (("P", "P/k", "Q", "R"), (("P", "T"), ("R", "P"), ("Q", "R"), ("T", "Q"))),
}


def chain(lab, home, tmp_path, scenario: str):
    """A full and an incremental of alice after the renames of ``scenario`` (and a flag
    the incremental carries), the store as the incremental has it (view), and the full
    restored archive by archive (-H) into an emptied store."""
    boxes, renames = SCENARIOS[scenario]
    lab.deliver(["alice"], message("first"))
    with lab.imap("alice") as c:
        for box in boxes:
            c.create(box)
            c.subscribe(box)
            c.append(box, message(f"in {box}"), ["$Label1"])
            c.append(box, message(f"in {box}, 2"), [r"\Seen", "kw07"])
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    time.sleep(1.1)
    with lab.imap("alice") as c:
        for old, new in renames:
            c.rename(old, new)
        c.select(renames[-1][1])
        c.uid_store(c.uids(), "+FLAGS", ["$Moved"])
        c.unselect()
    want = view(lab, "alice")
    run(home, "imsbackup", "-f", incr, "--base", f"{full}.state", "/", check=0)
    wipe(lab, home)
    run(home, "imsrestore", "-H", "-f", full, "/", check=0)
    return incr, want


def aside(lab) -> list[str]:
    return [n for n in view(lab, "alice")[0] if n.startswith("ims-moving-")]


@pytest.mark.parametrize("scenario,later", [("swap", 0), ("cycle", 0), ("cycle", 1)])
def test_a_restore_killed_with_a_folder_moved_aside_ends_exact_when_run_again(lab, tmp_path, scenario, later):
    """Killed just after the rename aside, or (the cycle) after the rename that follows
    it (R -> P: the folder aside has no name of its own to go back to)."""
    home = tmp_path / "ims"
    configure(lab, home)
    incr, want = chain(lab, home, tmp_path, scenario)
    killed = run(home, "imsrestore", "-f", incr, "/", env=killing_doveadm(tmp_path, later))
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-500:])
    assert aside(lab), "the kill came before a folder was moved aside"
    again = run(home, "imsrestore", "-f", incr, "/", text=True)
    assert again.returncode == 0, again.stderr
    assert aside(lab) == []
    assert view(lab, "alice") == want


def test_a_folder_a_killed_restore_moved_aside_that_the_archive_does_not_want_is_named(lab, tmp_path):
    """A folder ``ims-moving-PID-N`` of a process that is gone whose mailbox GUID the
    restored copy has under no name (another archive than the killed run's) is not
    removed nor left silently: the restore gives its folders back and names it."""
    home = tmp_path / "ims"
    configure(lab, home)
    incr, want = chain(lab, home, tmp_path, "swap")
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"ims-moving-{dead.pid}-0"
    with lab.imap("alice") as c:
        c.create(name)
        c.append(name, message("aside"), [r"\Seen"])
    got = run(home, "imsrestore", "-f", incr, "/", text=True)
    assert got.returncode != 0 and f"{name!r} was moved aside by a restore that was killed" in got.stderr, \
        (got.returncode, got.stderr)
    assert aside(lab) == [name]                     # its mail kept
    now = view(lab, "alice")
    assert {k: v for k, v in now[1].items() if k != name} == want[1]
