"""A third-party ims-asm plugin in its own distribution, used by the tests: it adds a
command, records run events to a file named by HELLO_EVENTS, and offers a device
scheme ``=hello=NAME`` that writes into the directory named by HELLO_DIR."""
import json
import os

import pluggy

hookimpl = pluggy.HookimplMarker("ims_asm")


def _hello(argv):
    print("hello from a third-party plugin:", " ".join(argv))
    return 0


@hookimpl
def ims_commands():
    return {"hello": (_hello, "say hello (test plugin)")}


def _record(event, **kw):
    path = os.environ.get("HELLO_EVENTS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, **kw}) + "\n")


@hookimpl
def ims_run_start(run):
    _record("start", kind=run.kind, device=run.device, paths=run.paths)


@hookimpl
def ims_mailbox_done(run, mailbox, result):
    _record("mailbox", kind=run.kind, mailbox=mailbox, status=result["status"], messages=result["messages"])


@hookimpl
def ims_run_end(run, status):
    _record("end", kind=run.kind, status=status, counts=run.counts)


@hookimpl
def ims_open_device(spec, mode, blocking_factor, config):
    if not spec.startswith("=hello="):
        return None
    from asm.devices import Device
    path = os.path.join(os.environ["HELLO_DIR"], spec[len("=hello="):])
    return Device(spec, open(path, mode), seekable=True, kind="file")


@hookimpl
def ims_store_drivers():
    """A store driver of its own (the classic store under another name)."""
    from asm.store.classic import ClassicStore

    class HelloStore(ClassicStore):
        name = "hellostore"
    return {"hellostore": HelloStore}


def _greeting(value):
    if not value.isalpha():
        raise ValueError("letters only")
    return value


@hookimpl
def ims_options():
    return {"hello.greeting": (_greeting, "hello", "what the hello plugin says (test plugin)")}
