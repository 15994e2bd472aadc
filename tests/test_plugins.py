"""The plugin layer: entry points, the allow-list, a third-party distribution found
through its entry point, run events and device hooks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import put, run

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def thirdparty(tmp_path_factory):
    """ims-asm-hello installed (pip, its own distribution) into a private directory."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), os.path.join(HERE, "thirdparty")], check=True,
                   capture_output=True)
    return str(target)


def _env(site, **extra):
    return {"PYTHONPATH": site + os.pathsep + os.path.dirname(HERE), **extra}


def test_builtins_are_entry_points(ims_home):
    out = run(ims_home, "imsplugins", "list", check=0).stdout.decode()
    for name in ("classic", "maildir", "localdevices"):
        assert name in out
    assert "store drivers: classic, maildir" in out


def test_thirdparty_plugin_found_and_listed(ims_home, thirdparty):
    out = run(ims_home, "imsplugins", "list", env=_env(thirdparty), check=0).stdout.decode()
    line = [ln for ln in out.splitlines() if ln.startswith("hello")]
    assert line and "ims-asm-hello" in line[0] and "0.3.1" in line[0]
    assert "command hello: say hello (test plugin)" in out
    got = run(ims_home, "imsplugins", "run", "hello", "a b", env=_env(thirdparty), check=0)
    assert got.stdout.decode().strip() == "hello from a third-party plugin: a b"


def test_allow_list_limits_loading(ims_home, thirdparty):
    env = _env(thirdparty, IMS_ASM_PLUGINS="classic,localdevices")
    out = run(ims_home, "imsplugins", "list", env=env, check=0).stdout.decode()
    assert "hello" not in out and "maildir" not in out
    bad = run(ims_home, "imsplugins", "run", "hello", env=env)
    assert bad.returncode == 2 and b"no plugin adds a command 'hello'" in bad.stderr


def test_driver_missing_from_allow_list_is_a_clear_error(ims_home, config):
    bad = run(ims_home, "imsbackup", "-f", ims_home / "x.ims", "/", env={"IMS_ASM_PLUGINS": "localdevices"})
    assert bad.returncode == 2
    assert b"no loaded plugin offers it" in bad.stderr
    assert not (ims_home / "x.ims").exists()


def test_run_events_and_device_hook(ims_home, config, store, thirdparty, tmp_path):
    put(store, "joe", "INBOX", 1)
    put(store, "joe", "Work", 2)
    events, outdir = tmp_path / "events.jsonl", tmp_path / "dev"
    outdir.mkdir()
    env = _env(thirdparty, HELLO_EVENTS=str(events), HELLO_DIR=str(outdir))
    run(ims_home, "imsbackup", "-f", "=hello=a.ims", "/primary/joe", env=env, check=0)
    assert (outdir / "a.ims").stat().st_size % 10240 == 0
    assert not os.path.exists("=hello=a.ims.state")      # no state file in the working directory
    seen = [json.loads(ln) for ln in events.read_text().splitlines()]
    assert seen[0] == {"event": "start", "kind": "backup", "device": "=hello=a.ims", "paths": ["/primary/joe"]}
    boxes = [(e["mailbox"], e["messages"]) for e in seen if e["event"] == "mailbox"]
    assert boxes == [("/primary/joe/INBOX", 1), ("/primary/joe/Work", 1)]
    assert seen[-1]["event"] == "end" and seen[-1]["status"] == 0 and seen[-1]["counts"]["messages"] == 2
    # the restore side reports through the same hooks and reads through the plugin device
    store.delete_user("joe")
    events.unlink()
    run(ims_home, "imsrestore", "-f", "=hello=a.ims", env=env, check=0)
    seen = [json.loads(ln) for ln in events.read_text().splitlines()]
    assert seen[0]["event"] == "start" and seen[0]["kind"] == "restore"
    assert seen[-1] == {"event": "end", "kind": "restore", "status": 0,
                        "counts": {"users": 1, "folders": 2, "messages": 2, "links": 0, "bytes": seen[-1]["counts"]["bytes"]}}


def test_broken_plugin_is_one_line_exit_2(ims_home, config, tmp_path):
    dist = tmp_path / "site" / "badplug-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: badplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ims_asm]\nbad = no_such_module_xyz\n")
    for cmd in (["imsbackup", "-f", tmp_path / "a.ims", "/"], ["imsrestore", "-f", tmp_path / "a.ims"],
                ["imsplugins", "list"]):
        p = run(ims_home, *cmd, env={"PYTHONPATH": str(tmp_path / "site") + os.pathsep + os.path.dirname(HERE)})
        assert p.returncode == 2, p.stderr
        assert p.stderr.decode().strip().endswith("failed to load: No module named 'no_such_module_xyz'")
        assert len(p.stderr.splitlines()) == 1
    assert not (tmp_path / "a.ims").exists()


def test_a_plugin_store_driver_and_its_own_options(ims_home, thirdparty):
    env = _env(thirdparty)
    run(ims_home, "msconfig", "set", "store.driver", "hellostore", env=env, check=0)
    run(ims_home, "msconfig", "set", "hello.greeting", "bonjour", env=env, check=0)
    shown = run(ims_home, "msconfig", "show", "-a", env=env, check=0).stdout.decode()
    assert "role.hello.greeting = bonjour" in shown and "role.store.driver = hellostore" in shown
    bad = run(ims_home, "msconfig", "set", "hello.greeting", "bon jour", env=env)
    assert bad.returncode == 2 and b"letters only" in bad.stderr
    # the driver is the plugin's: a backup runs on it
    run(ims_home, "imsbackup", "-f", ims_home / "h.ims", "/", env={**env, "IMS_ASM_PLUGINS": ""},
        check=18)                                  # an empty store: exit 18, not a driver error
    # the plugin installed but not loaded: its options are kept as written, a command
    # that needs the driver says which is missing, msconfig still works; an unknown
    # driver is refused
    alone = _env(thirdparty, IMS_ASM_PLUGINS="classic,maildir,localdevices")
    bad = run(ims_home, "imsbackup", "-f", ims_home / "h.ims", "/", env=alone)
    assert bad.returncode == 2 and b"'hellostore' but no loaded plugin offers it" in bad.stderr
    bad = run(ims_home, "msconfig", "set", "store.driver", "nosuch", env=alone)
    assert bad.returncode == 2 and b"classic, maildir" in bad.stderr
    run(ims_home, "msconfig", "set", "store.driver", "classic", env=alone, check=0)
    shown = run(ims_home, "msconfig", "show", env=alone, check=0).stdout.decode()
    assert "role.hello.greeting = bonjour" in shown
    bad = run(ims_home, "msconfig", "set", "hello.other", "x", env=env)
    assert bad.returncode == 2 and b"unknown option" in bad.stderr
    # the plugin uninstalled: its option is no installed plugin's, as a typo's is not
    gone = run(ims_home, "msconfig", "show", env={"PYTHONPATH": os.path.dirname(HERE)})
    assert gone.returncode == 2 and len(gone.stderr.splitlines()) == 1
    assert b"msg.conf:" in gone.stderr and b"no installed plugin is named 'hello'" in gone.stderr


def test_registering_finds_what_pluggy_finds():
    """asm.plugins' manager answers most names of a module itself (startup time): it must
    register exactly the hook implementations pluggy's own manager registers, for every
    built-in plugin and for modules holding every kind of attribute pluggy looks at."""
    import types

    import pluggy

    from asm import hookspecs, plugins
    from asm.hookspecs import hookimpl

    def odd_module():
        m = types.ModuleType("odd")

        @hookimpl
        def ims_commands():
            return {}

        def ims_run_start(run):                 # a hook's name, no marker: not registered
            pass

        class Holder:
            @staticmethod
            @hookimpl
            def ims_run_end(run, status):
                pass

            @hookimpl
            def ims_mailbox_done(self, run, mailbox, result):
                pass

        m.ims_commands, m.ims_run_start = ims_commands, ims_run_start
        m.ims_run_end = Holder.__dict__["ims_run_end"]            # a staticmethod object
        m.ims_mailbox_done = Holder().ims_mailbox_done          # a bound method
        m.unmarked = lambda: None
        m.number, m.text, m.cls, m.mod = 7, "x", Holder, types
        m.__annotations__ = {}
        return m

    def found(pm):
        return sorted((caller.name, impl.plugin_name, impl.function.__qualname__)
                      for caller in vars(pm.hook).values() if isinstance(caller, pluggy.HookCaller)
                      for impl in caller.get_hookimpls())

    plugins.reset()
    try:
        ours = plugins.get_manager()
        theirs = pluggy.PluginManager(plugins.GROUP)
        theirs.add_hookspecs(hookspecs)
        for name, plugin in ours.list_name_plugin():
            theirs.register(plugin, name=name)
        for pm in (ours, theirs):
            pm.register(odd_module(), name="odd")
        assert found(ours) == found(theirs)
        assert ("ims_store_drivers", "maildir", "ims_store_drivers") in found(ours)
        assert {f[0] for f in found(ours) if f[1] == "odd"} == {"ims_commands", "ims_run_end", "ims_mailbox_done"}
    finally:
        plugins.reset()


def test_plugins_hear_the_status_the_end_of_the_restore_batch_gives(ims_home, config, store, tmp_path, monkeypatch):
    """A store that hands its copy to the mail server when the restore's batch ends
    (dbox: doveadm) can fail the run there, exit 17 ("run the restore again").  The
    plugins (NetBackup notify scripts, the engines' status files) heard the status from
    before that end: 0, so a job the command failed was reported done."""
    from asm import plugins
    from asm.cli import imsrestore
    from asm.hookspecs import hookimpl
    from asm.store.base import StoreError

    put(store, "joe", "INBOX", 1)
    archive = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-f", archive, "/")
    store.delete_user("joe")
    heard = []

    class Recorder:
        @hookimpl
        def ims_run_end(self, run, status):
            heard.append((run.kind, status))

    def refused(self):
        raise StoreError("the mail server did not take the copy of joe: run the restore again")

    monkeypatch.setattr(type(store), "sync", refused)
    plugins.get_manager().register(Recorder(), name="recorder")
    try:
        status = imsrestore.main(["-f", str(archive)])
    finally:
        plugins.get_manager().unregister(name="recorder")
    assert status == 17
    assert heard == [("restore", 17)]
