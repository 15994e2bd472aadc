"""Rebuilding a store's own records from what is on disk (``reconstruct``).

A store keeps two kinds of things: the messages (files) and its records of them (the
classic mailbox list and folder indexes; Maildir's ``dovecot-uidlist``,
``dovecot-keywords`` and Dovecot's index caches).  After a disaster the two may come
back from different times, or the records not at all.  The message files are the
truth about *which* messages exist; the records are the truth about their identity
(UIDVALIDITY, UIDs) and state (flags, dates).  Reconstruct rebuilds the records from
the files, and takes each message's identity and state from the best witness that
still knows it (:mod:`asm.reconstruct.knowledge`): the damaged or older record
itself, the restore journal, or archives named on the command line.  What no
witness knows is given anew and named, never guessed silently.

:class:`Report` collects what was found: each :class:`Finding` says where, what, and
whether it was repaired completely, repaired with something unknown (a new UID, a new
UIDVALIDITY, flags that could not be known), or lost (a message whose file is gone).
"""
from __future__ import annotations

from dataclasses import dataclass, field

#: A problem repaired completely: nothing a client relies on changed.
REPAIRED = "repaired"
#: Repaired, but with something no witness knew (new UIDs, a new UIDVALIDITY, flags).
UNKNOWN = "unknown"
#: Gone for good here (a message whose file is missing); restore it from an archive.
LOST = "lost"
#: Worth saying, not damage (e.g. mail an MDA delivered that Dovecot has not numbered yet).
NOTE = "note"


@dataclass(frozen=True)
class Finding:
    """One thing reconstruct found: its kind, where, and what was (or would be) done."""

    kind: str          # REPAIRED, UNKNOWN, LOST or NOTE
    where: str         # a logical mailbox (/primary/joe/INBOX), a user, or a file
    what: str          # one line: what was wrong and what was (or would be) done

    def line(self, repair: bool) -> str:
        if self.kind == NOTE:
            return f"{self.where}: {self.what}"
        label = {REPAIRED: "repaired" if repair else "damaged",
                 UNKNOWN: "rebuilt with unknowns" if repair else "damaged",
                 LOST: "lost"}[self.kind]
        return f"{self.where}: {label}: {self.what}"


@dataclass
class Report:
    """Everything one run found, in order; counters for the summary."""

    repair: bool = True
    findings: list = field(default_factory=list)
    users: int = 0
    folders: int = 0
    messages: int = 0
    listener: object = None          # callable(Finding) -> None, to print as we go
    progress: object = lambda: None  # called after each folder (the command's progress line)

    def add(self, kind: str, where: str, what: str) -> Finding:
        f = Finding(kind, where, what)
        self.findings.append(f)
        if self.listener is not None:
            self.listener(f)
        return f

    def count(self, *kinds: str) -> int:
        return sum(1 for f in self.findings if f.kind in kinds)

    @property
    def clean(self) -> bool:
        """Nothing but notes: the store was (and is) consistent, or every repair was
        complete (no unknowns, nothing lost) and this run was asked to repair."""
        if self.count(LOST, UNKNOWN):
            return False
        return self.repair or not self.count(REPAIRED)


def uid_list(uids) -> str:
    """[1, 2, 3, 7] -> '1:3,7' (the archive's UID-list form, short in messages)."""
    out, run = [], None
    for u in sorted(uids):
        if run and u == run[1] + 1:
            run[1] = u
            continue
        if run:
            out.append(f"{run[0]}:{run[1]}" if run[1] > run[0] else str(run[0]))
        run = [u, u]
    if run:
        out.append(f"{run[0]}:{run[1]}" if run[1] > run[0] else str(run[0]))
    text = ",".join(out)
    return text if len(text) <= 120 else text[:100] + f"... ({len(uids)} UIDs)"
