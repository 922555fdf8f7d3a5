"""Word n-gram language models from a corpus's transcripts, estimated by KenLM's `lmplz`.

Usage:
    conformer-prune lm --data corpus/train --out runs/lm/3gram.arpa --order 3

`lmplz` (modified Kneser-Ney) is not on PyPI as a program; `make lmplz` builds it from the
`kenlm` source distribution on PyPI (it needs Boost and zlib headers, installed by the Makefile)
into the virtual environment's `bin/`. Transcripts are written one per line, as they are.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from conformer_prune.utils import atomic_write

__all__ = ["build_arpa", "find_lmplz"]


def find_lmplz(path: str | Path | None = None) -> Path:
    """`path`, else `lmplz` beside the running Python (a virtual environment's bin/), else on PATH.

    Raises:
        FileNotFoundError: no lmplz found.
    """
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"lmplz {path} does not exist")
        return Path(path)
    beside = Path(sys.executable).parent / "lmplz"
    found = beside if beside.is_file() else shutil.which("lmplz")
    if not found:
        raise FileNotFoundError(
            "KenLM's lmplz was not found beside Python or on PATH; build it with `make lmplz`"
        )
    return Path(found)


def build_arpa(
    texts: Iterable[str], out: str | Path, order: int = 3, lmplz: str | Path | None = None, memory: str = "1G"
) -> Path:
    """Estimate an `order`-gram ARPA model of `texts` (one sentence each) and write it to `out`.

    ``--discount_fallback`` lets lmplz estimate discounts on small corpora, whose counts of
    counts do not allow Kneser-Ney's closed form.

    Raises:
        ValueError: `order` below 2 (KenLM's decoders need at least bigrams), no text, or lmplz
            failed (its message is included).
    """
    if order < 2:
        raise ValueError(f"order must be at least 2 (KenLM loads bigram models and up), found {order}")
    lines = [" ".join(t.split()) for t in texts]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError("no transcripts to estimate a language model from")
    binary = find_lmplz(lmplz)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text("\n".join(lines) + "\n", encoding="utf-8")

        def run(dst: str) -> None:
            command = [str(binary), "-o", str(order), "-S", memory, "-T", tmp, "--discount_fallback"]
            with open(text, encoding="utf-8") as src, open(dst, "w", encoding="utf-8") as arpa:
                done = subprocess.run(command, stdin=src, stdout=arpa, stderr=subprocess.PIPE, text=True)
            if done.returncode != 0:
                raise ValueError(f"lmplz failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

        atomic_write(Path(out), run)
    return Path(out)
