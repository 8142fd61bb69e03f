"""Self-healing: the host's supervisor of clients, and the state events it publishes.

``Client`` reconnects by itself until it gives up (FAILED, after ``max_failures`` attempts in a
row) or WhatsApp ends the session (LOGGED_OUT, STREAM_REPLACED, TEMPORARY_BAN,
CLIENT_OUTDATED). :class:`ClientSupervisor` sits above it:

- after FAILED it waits ``cooldown`` seconds, closes the client and starts a fresh one (a new
  transport too), at most ``max_restarts`` times in any hour. Past that it gives up: the
  reason is what ``/health`` answers with a 503, so the platform restarts the machine;
- the terminal states never restart: a new client cannot help (LOGGED_OUT needs pairing
  again). ``/health`` stays 200, ``/health/ready`` is 503 with the state and what to do.

Every transition is also a state event (:class:`~.state_events.StateEvents`, which the host
opens and closes): an entry in the Redis stream ``{prefix}:events`` (MAXLEN-trimmed), which the
webhook dispatcher delivers like messages.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from waclient.client import Client, ClientState, StateChange
from waclient.events import PairStatusEv
from waclient.lifetime import Lifetime

if TYPE_CHECKING:
    from .state_events import StateEvents

__all__ = ["ADVICE", "ClientSupervisor", "HealingStats"]

log = logging.getLogger("waclient.host")

HOUR = 3600.0
ADVICE: dict[ClientState, str] = {
    ClientState.LOGGED_OUT: "the phone logged this session out: pair again (GET /session/qr "
    "or POST /session/pair-code)",
    ClientState.STREAM_REPLACED: "another client took over this session: stop it, then restart "
    "the host",
    ClientState.TEMPORARY_BAN: "WhatsApp banned this number for a while: wait, then restart "
    "the host",
    ClientState.CLIENT_OUTDATED: "WhatsApp refuses this client version: upgrade waclient and "
    "neonize",
}
"""What to do about each terminal state that a restart cannot fix."""
_EVENT_FOR_STATE: dict[ClientState, str] = {
    ClientState.CONNECTED: "session.connected",
    ClientState.FAILED: "session.failed",
    ClientState.LOGGED_OUT: "session.logged_out",
    ClientState.STREAM_REPLACED: "session.terminal",
    ClientState.TEMPORARY_BAN: "session.terminal",
    ClientState.CLIENT_OUTDATED: "session.terminal",
}


@dataclass(frozen=True, slots=True)
class HealingStats:
    state: str
    failures_in_a_row: int
    restarts: int
    """Fresh clients started after FAILED, since the host started."""
    restarts_last_hour: int
    next_restart_at: float | None
    """``time.time()`` of the coming restart, while cooling down."""
    gave_up: str | None
    """Why the supervisor stopped restarting (then ``/health`` is 503)."""
    advice: str | None
    """What to do about a terminal state (pair again...)."""

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class ClientSupervisor(Lifetime):
    """Keeps a :class:`Client` alive across FAILED; see the module docstring.

    ``make_client`` builds a fresh, not yet started client (with its transport and everything
    attached to it); the supervisor starts and closes it: :meth:`start` starts the first client
    and the watcher, :meth:`close` stops the watcher, then closes the current client.
    """

    def __init__(
        self,
        make_client: Callable[[], Client],
        *,
        cooldown: float = 300.0,
        max_restarts: int = 6,
        events: StateEvents | None = None,
        on_new_client: Callable[[Client], Awaitable[None] | None] | None = None,
    ) -> None:
        if cooldown < 0 or max_restarts < 0:
            raise ValueError("cooldown and max_restarts must be >= 0")
        self.make_client = make_client
        self.cooldown = cooldown
        self.max_restarts = max_restarts
        self.events = events
        self.on_new_client = on_new_client
        self.client: Client | None = None
        self.restarts = 0
        self.gave_up: str | None = None
        self.next_restart_at: float | None = None
        self._restart_times: collections.deque[float] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        """The watcher, once started."""

    async def _open(self) -> None:
        await self._new_client()
        self._task = self.spawn(self._watch(), name="waclient-healing")

    async def _close(self) -> None:
        if self._task is not None:  # first, so that no restart begins meanwhile
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.client is not None:
            await self.client.close()

    def liveness_failure(self) -> str | None:
        """Why ``/health`` must answer 503 (the supervisor gave up), or None."""
        return self.gave_up

    def statistics(self) -> HealingStats:
        client = self.client
        state = client.state if client is not None else ClientState.STOPPED
        return HealingStats(
            state=state.value,
            failures_in_a_row=client.failures if client is not None else 0,
            restarts=self.restarts,
            restarts_last_hour=self._restarts_in_window(),
            next_restart_at=self.next_restart_at,
            gave_up=self.gave_up,
            advice=ADVICE.get(state),
        )

    # -- the loop --------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            client = self.client
            assert client is not None
            state = await client.wait_for(*_STOPPING_STATES)
            if state is not ClientState.FAILED:
                if state in ADVICE:
                    log.error("WhatsApp session ended (%s): %s", state.value, ADVICE[state])
                return  # terminal: a new client cannot help; STOPPED: we are closing
            if self._restarts_in_window() >= self.max_restarts:
                self.gave_up = (
                    f"the client failed and was restarted {self.max_restarts} times in the "
                    "last hour; giving up so the platform restarts the machine"
                )
                log.error("WhatsApp: %s (last error: %s)", self.gave_up, client.last_error)
                self._emit("session.failed", {"gave_up": True, "reason": self.gave_up})
                return
            self.next_restart_at = time.time() + self.cooldown
            log.warning(
                "WhatsApp client FAILED (%s); a fresh client in %.0f s",
                client.last_error,
                self.cooldown,
            )
            if not await self.sleep(self.cooldown):
                return
            await client.close()
            self._restart_times.append(time.monotonic())
            self.restarts += 1
            self.next_restart_at = None
            await self._new_client()
            self._emit("session.restarted", {"restarts": self.restarts})

    async def _new_client(self) -> None:
        client = self.make_client()
        client.on(StateChange, self._on_state)
        client.on(PairStatusEv, self._on_paired)
        self.client = client
        if self.on_new_client is not None:
            result = self.on_new_client(client)
            if result is not None:
                await result
        await client.start()

    def _restarts_in_window(self) -> int:
        horizon = time.monotonic() - HOUR
        while self._restart_times and self._restart_times[0] < horizon:
            self._restart_times.popleft()
        return len(self._restart_times)

    # -- state events ----------------------------------------------------------------------

    def _on_state(self, change: StateChange) -> None:
        event = _EVENT_FOR_STATE.get(change.new)
        if event is None and change.old is ClientState.CONNECTED:
            event = "session.disconnected"
        if event is None:
            return
        data: dict[str, Any] = {"state": change.new.value, "generation": change.generation}
        client = self.client
        if change.new is ClientState.FAILED and client is not None:
            data["failures"] = client.failures
            data["last_error"] = client.last_error
        if change.new in ADVICE:
            data["advice"] = ADVICE[change.new]
        self._emit(event, data)

    def _on_paired(self, event: Any) -> None:
        self._emit("session.paired", {"jid": str(getattr(event.ID, "User", ""))})

    def _emit(self, event_type: str, data: Mapping[str, Any]) -> None:
        if self.events is not None:
            self.events.emit(event_type, data)


_STOPPING_STATES = (
    ClientState.FAILED,
    ClientState.STOPPED,
    *ADVICE,
)
