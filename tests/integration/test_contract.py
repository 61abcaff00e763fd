"""The interface XML in dbus/ is the contract: the live service must introspect exactly as it."""

from __future__ import annotations

from pathlib import Path

from dbus_fast import MessageType
from dbus_fast.introspection import Interface, Node

from conftest import Daemon, RemoteJournal, bus_call
from crashbroker.adapters.dbus_names import BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH

CONTRACT = Path(__file__).resolve().parents[2] / "dbus" / "org.kde.crashbroker1.Manager.xml"


def shape(iface: Interface) -> dict[str, object]:
    """Everything a client depends on. Signal argument names are documentation only (dbus-fast
    does not introspect them), so signals compare by types. Annotations are left out on purpose:
    the XML's org.qtproject.QtDBus.QtTypeName ones are hints for Qt's code generator
    (tests/integration/test_qt_interface.py), not part of the wire contract, and dbus-fast's
    introspection has no way to carry them."""
    return {
        "methods": {
            m.name: [(a.name, a.direction.value, a.signature) for a in m.in_args]
            + [(None, a.direction.value, a.signature) for a in m.out_args]
            for m in iface.methods
        },
        "signals": {s.name: [a.signature for a in s.args] for s in iface.signals},
        "properties": {p.name: (p.signature, p.access.value) for p in iface.properties},
    }


def contract() -> Interface:
    node = Node.parse(CONTRACT.read_text())
    [iface] = [i for i in node.interfaces if i.name == MANAGER_INTERFACE]
    return iface


async def test_live_introspection_matches_the_xml(daemon: Daemon, remote_journal: RemoteJournal):
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    await daemon.start()
    reply = await bus_call(
        daemon.client.bus,
        "Introspect",
        destination=BUS_NAME,
        path=OBJECT_PATH,
        interface="org.freedesktop.DBus.Introspectable",
    )
    assert reply.message_type == MessageType.METHOD_RETURN
    live = [i for i in Node.parse(reply.body[0]).interfaces if i.name == MANAGER_INTERFACE]
    assert len(live) == 1
    assert shape(live[0]) == shape(contract())


def test_contract_names_every_member_of_design_md():
    iface = shape(contract())
    methods = {"ListCrashes", "GetCrash", "Dismiss", "DismissAll", "Claim", "Release"}
    methods |= {"RequestBacktrace", "GetBacktrace"}
    assert methods <= set(iface["methods"])  # type: ignore[arg-type]
    assert set(iface["signals"]) == {"CrashDetected", "CrashUpdated", "CrashRemoved"}  # type: ignore[arg-type]
    assert set(iface["properties"]) == {"Version", "CrashCount", "CaughtUp"}  # type: ignore[arg-type]
