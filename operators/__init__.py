"""Stream logic with no I/O: transitions, (later) embedding, clusters, drift and cadence."""

from operators.transitions import TransitionTracker, mine_triples

__all__ = ["TransitionTracker", "mine_triples"]
