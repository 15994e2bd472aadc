"""NetWorker/EBS module: registers imsasm, mkbackupdir and imsasmreport as commands."""
from asm.hookspecs import hookimpl


def _lazy(module: str):
    def main(argv):
        import importlib
        return importlib.import_module(f"plugins.networker.{module}").main(argv)
    return main


@hookimpl
def ims_commands():
    return {
        "imsasm": (_lazy("imsasm"), "NetWorker external ASM: save/recover/compare a save stream (uasm arguments)"),
        "mkbackupdir": (_lazy("mkbackupdir"), "build the backup image tree of placeholders and .nsr directives"),
        "imsasmreport": (_lazy("report"), "report the save records since the tree was built (savepnpc pstcmd)"),
    }
