"""conformer-prune: make Conformer-CTC speech recognizers smaller and faster."""

__version__ = "0.1.0"
