"""Registers imsbacula with the plugin layer (``imsplugins run bacula ...``)."""
from asm.hookspecs import hookimpl


@hookimpl
def ims_commands():
    from plugins.bacula.cli import main
    return {"bacula": (main, "Bacula bpipe module: FileSet/Job resources, backup and restore streams")}
