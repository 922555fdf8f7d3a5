"""How an evaluation is shown: the name of its decoding, a two-column table, and where the errors
are (`format_breakdown`)."""

from __future__ import annotations

from typing import Any

__all__ = ["decoding_name", "format_breakdown", "format_interval", "format_results"]


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


def format_breakdown(name: str, result: dict[str, Any]) -> str:
    """`conformer_prune.evaluate.breakdown.breakdown`'s result as text: the split, its words by
    whether training saw them, and one line per speaker, worst first."""
    total = result["all"]
    size = f"{total['utterances']:,} utterances, {total['words']:,} words"
    lines = [f"{name}: WER {100 * total['wer']:.2f}% ({size})"]
    vocab = result.get("vocabulary")
    if vocab is not None:
        lines.append(
            f"  words not in the training text: {100 * vocab['unknown_share']:.1f}% of the reference words"
        )
        for kind in ("known", "unknown"):
            part = vocab[kind]
            lines.append(
                f"  {kind + ' words':<16} {part['words']:>8,} words, {100 * part['error_rate']:6.2f}% "
                "substituted or deleted"
            )
        lines.append(f"  {'insertions':<16} {vocab['insertions']:>8,}")
    lines.append(f"  {'speaker':<16} {'utts':>6} {'words':>8} {'WER':>8}")
    for speaker, c in result["speakers"].items():
        lines.append(f"  {speaker:<16} {c['utterances']:>6,} {c['words']:>8,} {100 * c['wer']:7.2f}%")
    return "\n".join(lines)
