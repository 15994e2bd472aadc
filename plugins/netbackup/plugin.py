"""Registers ``imsnbu`` with the plugin layer (``imsplugins run imsnbu ...``)."""
from asm.hookspecs import hookimpl


@hookimpl
def ims_commands():
    from plugins.netbackup.cli import main
    return {"imsnbu": (main, "NetBackup: install notify scripts, print policy setup and bprestore commands")}
