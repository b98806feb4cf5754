"""Stream logic with no I/O: embedding backends, micro-batching, clusters, transitions, successor counts."""

from operators.successors import DecayedCounter, PairSuccessors, Successor, SuccessorTable
from operators.transitions import TransitionTracker, mine_triples

__all__ = ["DecayedCounter", "PairSuccessors", "Successor", "SuccessorTable", "TransitionTracker", "mine_triples"]
