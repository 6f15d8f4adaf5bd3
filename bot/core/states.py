"""Ticket states and which action moves a ticket from which state."""
from __future__ import annotations

NEW = "new"
CLAIMED = "claimed"
ON_THE_WAY = "on_the_way"
ON_SITE = "on_site"
REPAIRING = "repairing"
RESOLVED = "resolved"
CLOSED = "closed"
TRANSFERRED = "transferred"
REOPENED = "reopened"
CANCELLED = "cancelled"
# 完工 was submitted but the resolution check failed: still the engineer's.
VERIFYING = "verifying"

ALL = (NEW, CLAIMED, ON_THE_WAY, ON_SITE, REPAIRING, VERIFYING, RESOLVED, CLOSED, TRANSFERRED, REOPENED,
       CANCELLED)
TERMINAL = frozenset({CLOSED, CANCELLED})
# Waiting for an engineer to take it.
UNCLAIMED = frozenset({NEW, TRANSFERRED, REOPENED})
# Somebody owns it and is working on it.
IN_WORK = frozenset({CLAIMED, ON_THE_WAY, ON_SITE, REPAIRING, VERIFYING})
OPEN = frozenset(ALL) - TERMINAL - {RESOLVED}

# The engineer's stage commands: action -> (states it may start from, target state).
STAGES: dict[str, tuple[frozenset[str], str]] = {
    "depart": (frozenset({CLAIMED}), ON_THE_WAY),
    "arrive": (frozenset({CLAIMED, ON_THE_WAY}), ON_SITE),
    "start_repair": (frozenset({CLAIMED, ON_THE_WAY, ON_SITE, VERIFYING}), REPAIRING),
    "resolve": (frozenset(IN_WORK), RESOLVED),
}

# Order of the customer's six-node timeline; index of the node a state reaches.
TIMELINE_PROGRESS = {
    NEW: -1, TRANSFERRED: 0, REOPENED: -1, CLAIMED: 0, ON_THE_WAY: 1, ON_SITE: 2,
    REPAIRING: 3, VERIFYING: 3, RESOLVED: 4, CLOSED: 5, CANCELLED: -1,
}
