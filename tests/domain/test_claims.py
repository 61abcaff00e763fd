"""Claims tied to the claimant's connection (domain/claims.py): pure, no bus."""

from __future__ import annotations

from crashbroker.domain.claims import Claim, ClaimBook, undo
from crashbroker.domain.model import CrashState

NEW, CLAIMED, DISMISSED = CrashState.NEW, CrashState.CLAIMED, CrashState.DISMISSED


def claim(crash_id: str = "c1", handler: str = "drkonqi", owner: str = ":1.7") -> Claim:
    return Claim(crash_id, handler, owner, NEW, "")


def test_only_the_claimants_connection_and_handler_may_release():
    book = ClaimBook()
    book.add(claim())
    assert book.may_release("c1", "drkonqi", ":1.7")
    assert not book.may_release("c1", "drkonqi", ":1.8")
    assert not book.may_release("c1", "other", ":1.7")


def test_a_claim_of_unknown_owner_is_tied_to_no_connection():
    book = ClaimBook()
    assert book.may_release("restored", "drkonqi", ":1.9")  # made before a restart
    book.add(claim("c2", owner=""))
    assert book.may_release("c2", "drkonqi", ":1.9")
    assert book.left("") == []


def test_leaving_the_bus_hands_back_that_connections_claims_once():
    book = ClaimBook()
    mine, theirs, also_mine = claim("c1"), claim("c2", owner=":1.8"), claim("c3")
    for c in (mine, theirs, also_mine):
        book.add(c)
    assert book.left(":1.7") == [mine, also_mine]
    assert book.left(":1.7") == []
    assert len(book) == 1
    assert book.pop("c2") == theirs and book.pop("c2") is None


def test_undo_restores_the_state_before_only_while_the_claim_holds():
    c = claim()
    assert undo(c, CLAIMED, "drkonqi") == (NEW, "")
    assert undo(c, DISMISSED, "drkonqi") is None  # dismissed meanwhile
    assert undo(c, CLAIMED, "someone-else") is None  # released and claimed again
    assert undo(c, NEW, "") is None
