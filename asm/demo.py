"""A demo store that looks like a real one: many users, the usual folders (INBOX, Sent,
Trash, "Bulk Mail", nested and non-ASCII names), a spread of message sizes, flags and
keywords, and a third of the messages delivered to several users as one inode."""
from __future__ import annotations

import io
import random
import time
from email.utils import formatdate

from asm.store.base import Store

FOLDERS = ["Sent", "Trash", "Bulk Mail", "Work", "Work/2023", "Work/Projects; Q3",
           "Réunions/Été", "Archive 50% off", "Entwürfe"]
KEYWORDS = ["$Label1", "$Junk", "$Forwarded", "Important"]
FLAGS = ["\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted"]
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
         "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "zoe"]


def _size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.70:
        return rng.randint(400, 8_000)
    if r < 0.95:
        return rng.randint(8_000, 120_000)
    if r < 0.995:
        return rng.randint(120_000, 1_000_000)
    return rng.randint(1_000_000, 3_000_000)


def make_message(rng: random.Random, n: int, size: int, sender: str, to: list[str], when: float) -> bytes:
    head = (f"From: {sender} <{sender}@example.com>\r\n"
            f"To: {', '.join(f'{u}@example.com' for u in to)}\r\n"
            f"Subject: demo message {n} ({size} bytes)\r\n"
            f"Date: {formatdate(when, localtime=False)}\r\n"
            f"Message-ID: <demo-{n}-{rng.getrandbits(48):x}@example.com>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n").encode()
    line = f"Line of demo message {n}: the quick brown fox jumps over the lazy dog. äöü\r\n".encode()
    body_len = max(0, size - len(head))
    body = (line * (body_len // len(line) + 1))[:body_len]
    return head + body


def user_names(count: int) -> list[str]:
    out = []
    i = 0
    while len(out) < count:
        base = NAMES[i % len(NAMES)]
        out.append(base if i < len(NAMES) else f"{base}{i // len(NAMES)}")
        i += 1
    return out


def build_demo(store: Store, users: int = 40, messages: int = 2000, seed: int = 7,
               partition: str = "primary", progress=None) -> dict:
    """Fill ``store`` and return counts {users, folders, messages, shared}."""
    rng = random.Random(seed)
    names = user_names(users)
    for u in names:
        if not store.exists(u):
            store.create_user(u, partition)
        for f in FOLDERS:
            if not store.exists(u, f):
                store.create_folder(u, f, subscribed=(f != "Bulk Mail"))
    now = time.time()
    delivered = shared = 0
    n = 0
    while delivered < messages:
        n += 1
        size = _size(rng)
        when = now - rng.uniform(0, 365 * 86400)
        multi = rng.random() < 0.15
        rcpts = rng.sample(names, min(len(names), rng.randint(2, 4))) if multi else [rng.choice(names)]
        folder = "INBOX" if rng.random() < 0.6 else rng.choice(FOLDERS)
        body = make_message(rng, n, size, rng.choice(names), rcpts, when)
        out = store.deliver(rcpts, io.BytesIO(body), folder=folder, internaldate=int(when))
        for user, info in out.items():
            if info is None:
                continue
            flags = [f for f in FLAGS if rng.random() < (0.7 if f == "\\Seen" else 0.08)]
            kws = [k for k in KEYWORDS if rng.random() < 0.05]
            if flags or kws:
                store.set_flags(user, folder, info.uid, flags, kws)
        delivered += len(rcpts)
        if len(rcpts) > 1:
            shared += len(rcpts)
        if progress:
            progress(delivered)
    return {"users": len(names), "folders": len(names) * (len(FOLDERS) + 1),
            "messages": delivered, "shared": shared}
