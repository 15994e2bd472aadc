"""Every hook of ims-asm, in one place.

Plugins implement these with ``@asm.hookimpl``; they are found through the
``ims_asm`` entry-point group (the built-ins are registered the same way, see
setup.cfg) and loaded by :mod:`asm.plugins`.  ``IMS_ASM_PLUGINS`` (a comma-separated
allow-list of entry-point names) limits which load.
"""
import pluggy

hookspec = pluggy.HookspecMarker("ims_asm")
hookimpl = pluggy.HookimplMarker("ims_asm")


@hookspec
def ims_store_drivers():
    """Called once when a store is opened.

    Return a dict ``{driver_name: factory}`` where ``factory(config)`` returns an
    :class:`asm.store.base.Store`.  ``config`` is an :class:`asm.config.Config`.
    A factory that accepts ``create`` is called ``factory(config, create=False)`` by
    commands that only read: it must then make nothing on disk.
    The driver named by ``store.driver`` is used; two plugins offering the same name
    is an error.
    """


@hookspec
def ims_options():
    """Options the plugin owns in msg.conf (as pytest's ``pytest_addoption``).

    Return ``{name: (check, default, doc)}``: ``check(value) -> value`` raises
    ValueError with the reason for a bad value; ``default`` is a string or None.  Names
    are ``<plugin>.<option>``; a name asm.config already declares is an error.
    ``msconfig set``/``show`` and :meth:`asm.config.Config.get` then know them.
    """


@hookspec(firstresult=True)
def ims_open_device(spec, mode, blocking_factor, config):
    """Open the device ``spec`` (the ``-f`` argument) for ``mode`` ``"rb"`` or ``"wb"``.

    Return a :class:`asm.devices.Device` if this plugin handles ``spec``, else None.
    The first non-None answer wins; plugins registered later are asked first, so a
    remote-device plugin sees ``host:path`` before the local plugin.  Raise
    :class:`asm.devices.DeviceError` for a device this plugin owns but cannot open.
    A device that puts a complete archive in place at its end says so
    (``puts_in_place``) and splits that end into ``prepare()`` and ``close(ok=True)``
    (:class:`asm.devices.Device`).
    """


@hookspec
def ims_commands():
    """Return ``{name: (main, summary)}`` for commands an engine module adds.

    ``main(argv) -> int`` runs the command; ``imsplugins run NAME ...`` calls it and
    ``imsplugins list`` shows the summary.
    """


@hookspec
def ims_run_start(run):
    """A backup or restore run begins.  ``run`` is an :class:`asm.events.Run`
    (kind ``"backup"``/``"restore"``, device, scope paths, options)."""


@hookspec
def ims_mailbox_done(run, mailbox, result):
    """One mailbox (``/partition/user/folder``) was backed up or restored.

    ``result`` is a dict: ``status`` ("ok", "error", "skipped"), ``messages``,
    ``bytes`` and ``error`` (a message, or None)."""


@hookspec
def ims_run_end(run, status):
    """The run ended with exit ``status`` (0 success).  Called even on failure;
    what savepnpc's pstcmd or NetBackup's bpend_notify want to know."""
