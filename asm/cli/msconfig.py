"""msconfig: show, set and unset installation options ($IMS_HOME/config/msg.conf)."""
from __future__ import annotations

import sys

from asm.cli.common import ArgParser, run_command, warn
from asm.config import OPTIONS, PARTITION_RE, Config, exclude_names, lookup, plugin_options
from asm.errors import EXIT_OK, EXIT_USAGE, ImsError

PROG = "msconfig"


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _main(argv: list[str] | None) -> int:
    p = ArgParser(prog=PROG, description="Show and change ims-asm options (IMS_HOME/config/msg.conf).")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="print role.NAME = VALUE for one option or every option that has a value")
    s.add_argument("name", nargs="?")
    s.add_argument("-a", "--all", action="store_true", help="also list options without a value, with their help")
    st = sub.add_parser("set", help="set an option")
    st.add_argument("name")
    st.add_argument("value")
    u = sub.add_parser("unset", help="remove an option (it returns to its default)")
    u.add_argument("name")
    args = p.parse_args(argv)
    cfg = Config()
    if getattr(args, "name", None) is not None:
        lookup(args.name)     # a bad name is the first thing to hear about
    if args.cmd != "set":
        cfg.require()         # only set may make an installation (a typo must not look empty)
    if args.cmd == "show":
        if args.name is not None:
            lookup(args.name)
            value = _value(cfg, args.name)
            if value is not None:
                print(f"role.{args.name} = {value}")
            return EXIT_OK
        names = sorted(set(OPTIONS) | set(plugin_options()) | set(cfg.values) | {"partition:primary.path"})
        for name in names:
            try:
                value = _value(cfg, name)
            except ImsError as exc:          # a layout doveconf cannot read: say so, show the rest
                warn(PROG, f"{name}: {exc}")
                continue
            if value is not None:
                print(f"role.{name} = {value}")
            elif args.all:
                print(f"# role.{name} (not set): {lookup(name).doc}")
        return EXIT_OK
    if args.cmd == "set":
        value = cfg.set(args.name, args.value)
        if cfg.created:
            warn(PROG, f"created the installation {cfg.home} (IMS_HOME)")
        if args.name == "store.backupexclude":
            # what the '%'-separated list was read as: a folder named '50% off' cannot be
            # named there, and '50% off' leaves out '50' and 'off' (said, not silent)
            names = exclude_names(value)
            warn(PROG, f"user backups now leave out the folder{'s' if len(names) > 1 else ''} "
                       f"{', '.join(repr(n) for n in names)} and the folders below "
                       f"{'them' if len(names) > 1 else 'it'}, in any case ('%' separates names)")
        return EXIT_OK
    if args.cmd == "unset":
        if not cfg.unset(args.name):
            warn(PROG, f"{args.name} was not set")
        return EXIT_OK
    return EXIT_USAGE

def _value(cfg: Config, name: str) -> str | None:
    """An option's value or its default, as configuration.md gives it: store.root and
    partition:primary.path default to paths under IMS_HOME, which Config computes."""
    value = cfg.get(name)
    if value is None and name == "store.root":
        return cfg.store_root
    m = PARTITION_RE.match(name)
    if m and m.group(1) == "primary" and cfg.driver == "maildir" and cfg.get("store.mail_location"):
        # a Dovecot layout is one partition, where its mail root template starts: the
        # store reads that, whatever partition:primary.path says (docs/dovecot.md)
        from asm.store.maildir.store import layout_partition_path
        return layout_partition_path(cfg)
    if value is None and m:
        return cfg.partitions().get(m.group(1))
    return value


if __name__ == "__main__":
    sys.exit(main())
