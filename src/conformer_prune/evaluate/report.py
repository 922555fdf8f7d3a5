"""How an evaluation is shown: the name of its decoding and a two-column table."""

from __future__ import annotations

from typing import Any

__all__ = ["decoding_name", "format_interval", "format_results"]


def decoding_name(decoder: Any) -> str:
    """ "greedy", or the beam search's settings (a `BeamSearchDecoder`): what eval.json records."""
    if decoder is None:
        return "greedy"
    cfg = decoder.config
    lm = f", lm {cfg.lm}, lm_weight {cfg.lm_weight}, word_score {cfg.word_score}" if cfg.lm else ""
    return f"beam {cfg.beam}{lm}"


def format_results(results: dict[str, object]) -> str:
    """A two-column table of an evaluation."""
    rows = []
    for key, value in results.items():
        if isinstance(value, float):
            shown = f"{value:.4f}" if key.startswith(("wer", "cer", "rtf", "hours")) else f"{value:,.1f}"
        elif isinstance(value, int):
            shown = f"{value:,}"
        else:
            shown = str(value)
        rows.append(f"  {key:<22} {shown}")
    return "\n".join(rows)


def format_interval(d: dict[str, float]) -> str:
    """A WER difference and its 95% interval (`paired_bootstrap_wer`'s dict) in points:
    ``+1.23 [+0.45, +2.01]``."""
    return f"{100 * d['delta']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
