"""Claims tied to the claimant's bus connection (pure).

A claim is made by a *handler* (a name the claimant chooses, e.g. ``drkonqi``) over one bus
connection (its unique name, e.g. ``:1.42``: its *owner*). Only the same handler on the same
connection may give it back, and when that connection leaves the bus the crash gets back the
state it had before the claim. The book lives in memory: a claim restored from the store after
a daemon restart has no known owner, and then the handler name alone may release it.
"""

from __future__ import annotations

from dataclasses import dataclass

from crashbroker.domain.model import CrashState


@dataclass(frozen=True, slots=True)
class Claim:
    """One claim: who holds it, and what the crash was before (to go back to)."""

    crash_id: str
    handler: str
    owner: str  # the claimant's unique bus name; "" when not known (not tied to a connection)
    state_before: CrashState
    claimed_by_before: str


class ClaimBook:
    """Which connection holds which claim."""

    def __init__(self) -> None:
        self._claims: dict[str, Claim] = {}

    def __len__(self) -> int:
        return len(self._claims)

    def add(self, claim: Claim) -> None:
        self._claims[claim.crash_id] = claim

    def may_release(self, crash_id: str, handler: str, owner: str) -> bool:
        """Whether ``handler`` on connection ``owner`` may give back the claim of ``crash_id``
        (the caller has checked that the crash is claimed by ``handler``). A claim of unknown
        owner (made before the daemon restarted) is tied to no connection."""
        claim = self._claims.get(crash_id)
        if claim is None or not claim.owner:
            return True
        return claim.handler == handler and claim.owner == owner

    def pop(self, crash_id: str) -> Claim | None:
        """Forget the claim of ``crash_id`` (released, dismissed, expired); the claim if any."""
        return self._claims.pop(crash_id, None)

    def left(self, owner: str) -> list[Claim]:
        """Connection ``owner`` left the bus: its claims, forgotten, to be undone."""
        if not owner:
            return []
        gone = [c for c in self._claims.values() if c.owner == owner]
        for claim in gone:
            del self._claims[claim.crash_id]
        return gone


def undo(claim: Claim, state: CrashState, claimed_by: str) -> tuple[CrashState, str] | None:
    """The (state, claimed_by) a crash now in ``state``/``claimed_by`` goes back to when
    ``claim``'s owner left; None when the crash is no longer held by that claim (dismissed,
    released and claimed again meanwhile)."""
    if state is not CrashState.CLAIMED or claimed_by != claim.handler:
        return None
    return claim.state_before, claim.claimed_by_before
