"""Space planning: what each group's dump will take, what the staging filesystem holds,
and the batches that fit.

An estimate is the archive's size computed from the store without reading a message:
every message's bytes rounded up to the 512-byte block, plus its pax headers; a second
copy of the same inode inside the group is a link member (headers only), as imsbackup
writes it.  Incrementals count only mail stored since the date.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from asm.backup import is_excluded
from asm.groups import PREDEFINED, Groups
from asm.store.base import StoreError
from asm.units import human
from staging.errors import NoSpace

BLOCK = 512
# pax extended header + its records (two blocks once a message has its GUID record,
# IMSASM.guid, and a Maildir message its base name, IMSASM.basename) + the ustar header
MEMBER_OVERHEAD = 4 * BLOCK
FOLDER_OVERHEAD = 4 * BLOCK       # (two blocks of records with the mailbox GUID, IMSASM.mailbox_guid)
USER_OVERHEAD = 3 * BLOCK
ARCHIVE_OVERHEAD = 8 * BLOCK + 20 * BLOCK   # header and trailer members, end blocks, last record


def _blocks(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


@dataclass
class GroupPlan:
    """One backup group of one partition to dump, with its users and estimated size."""

    partition: str
    group: str                      # backup group name; "user" = the users in no other group
    users: list
    paths: list                     # logical paths handed to imsbackup
    estimate: int = 0
    messages: int = 0
    kind: str = "full"
    since: float | None = None
    base: int | None = None

    @property
    def label(self) -> str:
        return f"/{self.partition}/{self.group}"


@dataclass
class Plan:
    """The groups a staging run dumps, in batches that fit the staging filesystem."""

    groups: list                    # list[GroupPlan]
    free: int                       # bytes the staging filesystem can take now
    reserve: int
    batches: list = field(default_factory=list)   # list[list[GroupPlan]]

    @property
    def total(self) -> int:
        return sum(g.estimate for g in self.groups)

    @property
    def capacity(self) -> int:
        return max(0, self.free - self.reserve)


def group_units(store, groups: Groups, wanted: list[str] | None = None) -> list[GroupPlan]:
    """One unit per (partition, backup group) with users, in partition then group order.

    With configured groups, the users matching none of them make up the unit ``user``
    (dumped as a list of user paths); without any, ``user`` is the whole partition.
    ``wanted`` holds group names (every partition) or ``/partition/group`` paths.
    """
    want_any, want_at = set(), set()
    for w in wanted or []:
        if w.startswith("/"):
            parts = [p for p in w.split("/") if p]
            if len(parts) != 2:
                raise ValueError(f"bad group {w!r}: use GROUP or /PARTITION/GROUP")
            want_at.add((parts[0], parts[1]))
        else:
            want_any.add(w)
    partitions = store.partitions()
    known = set(groups.names())
    for name in want_any | {g for _, g in want_at}:
        if name not in known:
            raise ValueError(f"no backup group {name!r} (groups: {', '.join(groups.names())}); "
                             f"see backup-groups.conf")
    for p, _ in want_at:
        if p not in partitions:
            raise ValueError(f"no partition {p!r} (partitions: {', '.join(partitions)})")
    configured = [n for n, _ in groups.groups]
    out = []
    for part in partitions:
        users = store.users(part)
        for name in configured + [PREDEFINED]:
            if wanted and name not in want_any and (part, name) not in want_at:
                continue
            members = [u for u in users if groups.group_of(u) == name]
            if not members:
                continue
            if name != PREDEFINED:
                paths = [f"/{part}/{name}"]
            elif not configured:
                paths = [f"/{part}/{PREDEFINED}"]
            else:
                paths = [f"/{part}/{PREDEFINED}/{u}" for u in members]
            out.append(GroupPlan(part, name, members, paths))
    return out


def estimate(store, unit: GroupPlan, exclude: list[str], since: float | None) -> None:
    """Fill in ``unit.estimate`` and ``unit.messages`` from the store's metadata."""
    seen: set = set()
    total = ARCHIVE_OVERHEAD
    count = 0
    for user in unit.users:
        total += USER_OVERHEAD
        try:
            folders = store.folders(user)
        except StoreError:
            continue
        for f in folders:
            if is_excluded(f.name, exclude):
                continue
            try:
                snap = store.snapshot(user, f.name, since=since)
            except StoreError:
                continue
            total += FOLDER_OVERHEAD + _blocks(12 * len(snap.messages))
            for m in snap.messages:
                if since is not None and m.changed < since:
                    continue
                count += 1
                total += MEMBER_OVERHEAD
                if m.nlink >= 2:
                    key = (m.dev, m.ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += _blocks(m.size)
    unit.estimate = total
    unit.messages = count


def free_space(directory: str) -> tuple[int, int]:
    """(bytes available to us, reserve kept free: 1% of the filesystem, at least 64 KiB)."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize, max(64 * 1024, st.f_blocks * st.f_frsize // 100)


def make_plan(units: list[GroupPlan], directory: str, can_batch: bool) -> Plan:
    """Fit the units into the free space: one batch when all fit, else batches (largest
    first, first fit).  Raises NoSpace when a group alone is too big, or when batches
    are needed and there is no way to empty the area between them."""
    free, reserve = free_space(directory)
    plan = Plan(units, free, reserve)
    cap = plan.capacity
    too_big = [u for u in units if u.estimate > cap]
    if too_big:
        u = max(too_big, key=lambda x: x.estimate)
        raise NoSpace(f"group {u.label} needs about {human(u.estimate)} but {directory} has "
                      f"{human(cap)} free (after a {human(reserve)} reserve): free space there, use a "
                      f"bigger staging directory (-D), or split the group in backup-groups.conf")
    if plan.total <= cap:
        plan.batches = [list(units)] if units else []
        return plan
    bins: list[list] = []
    room: list[int] = []
    for u in sorted(units, key=lambda x: -x.estimate):
        for i, r in enumerate(room):
            if u.estimate <= r:
                bins[i].append(u)
                room[i] -= u.estimate
                break
        else:
            bins.append([u])
            room.append(cap - u.estimate)
    order = {id(u): i for i, u in enumerate(units)}
    plan.batches = [sorted(b, key=lambda x: order[id(x)]) for b in bins]
    if not can_batch:
        raise NoSpace(f"the run needs about {human(plan.total)} but {directory} has {human(cap)} free: "
                      f"it fits in {len(plan.batches)} batches ({describe_batches(plan)}); pass "
                      f"--after-batch COMMAND (the engine saving each batch) or set staging.afterbatch")
    return plan


def describe_batches(plan: Plan) -> str:
    return "; ".join(f"batch {i}: " + ", ".join(u.label for u in b) for i, b in enumerate(plan.batches, 1))

