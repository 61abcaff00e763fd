"""``org.kde.crashbroker1.Launcher`` on the session bus: translation only."""

# No ``from __future__ import annotations``: dbus-fast reads the annotations at runtime.
import logging
from collections.abc import Awaitable, Callable

from dbus_fast import DBusError
from dbus_fast.annotations import DBusBool, DBusStr
from dbus_fast.service import ServiceInterface, dbus_method

from crashbroker.adapters.dbus_names import LAUNCHER_INTERFACE, error_name

logger = logging.getLogger(__name__)


class LauncherInterface(ServiceInterface):
    """``Launch(s id) → b``: start DrKonqi for a crash now (a user's "Report…")."""

    def __init__(self, launch: Callable[[str], Awaitable[bool]]) -> None:
        super().__init__(LAUNCHER_INTERFACE)
        self._launch = launch

    @dbus_method(name="Launch")
    async def launch(self, crash_id: DBusStr) -> DBusBool:
        try:
            return await self._launch(crash_id)
        except Exception:
            logger.exception("Launch(%s) failed", crash_id)
            raise DBusError(error_name("Failed"), "Launch failed; see the launcher's log") from None
