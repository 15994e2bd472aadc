"""imsplugins: list the loaded plugins and run the commands engine modules add.

    imsplugins list            entry point, distribution, version, module; then hooks and commands
    imsplugins run NAME ARGS   run a command an engine module adds (ims_commands hook)
"""
from __future__ import annotations

import sys

from asm import plugins
from asm.cli.common import ArgParser, UsageError, run_command
from asm.errors import EXIT_OK

PROG = "imsplugins"


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _main(argv: list[str] | None) -> int:
    p = ArgParser(prog=PROG, description="List plugins and run engine-module commands.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="loaded plugins, their versions, store drivers and commands")
    r = sub.add_parser("run", help="run a command added by a plugin")
    r.add_argument("name")
    r.add_argument("args", nargs="*")
    args, extra = p.parse_known_args(argv)
    if args.cmd == "list" and extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.cmd == "list":
        rows = plugins.loaded()
        w = max([len(r[0]) for r in rows] + [6])
        print(f"{'plugin':<{w}}  distribution  version  module")
        for name, dist, version, module in rows:
            print(f"{name:<{w}}  {dist:<12}  {version:<7}  {module}")
        drivers = sorted(plugins.store_factories())
        print(f"store drivers: {', '.join(drivers) or 'none'}")
        cmds = plugins.commands()
        for name in sorted(cmds):
            print(f"command {name}: {cmds[name][1]}")
        return EXIT_OK
    cmds = plugins.commands()
    if args.name not in cmds:
        raise UsageError(f"no plugin adds a command {args.name!r} (known: {', '.join(sorted(cmds)) or 'none'})")
    return int(cmds[args.name][0](list(args.args) + extra) or EXIT_OK)


if __name__ == "__main__":
    sys.exit(main())
