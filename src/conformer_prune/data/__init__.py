"""Data: corpus readers, audio input, features, tokenizer, batching and synthetic speech.

Names are imported lazily (PEP 562), so that the PyTorch-free modules (`audio`, `tokenizer`,
`corpus`) load without PyTorch: the ONNX Runtime path (`conformer-prune transcribe --onnx`) uses
them on machines that have no PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conformer_prune.lazy import lazy_getattr

if TYPE_CHECKING:
    from conformer_prune.data.audio import AudioError, load_audio
    from conformer_prune.data.corpus import (
        Utterance,
        read_corpus,
        read_librispeech,
        read_manifest,
        write_manifest,
    )
    from conformer_prune.data.dataset import Batch, BucketBatchSampler, SpeechDataset, collate
    from conformer_prune.data.features import (
        FeatureConfig,
        LogMelFeatures,
        SpecAugment,
        SpecAugmentConfig,
    )
    from conformer_prune.data.tokenizer import Tokenizer, TokenizerConfig, TokenizerError

_HOME = {
    "AudioError": "audio",
    "load_audio": "audio",
    "Utterance": "corpus",
    "read_corpus": "corpus",
    "read_librispeech": "corpus",
    "read_manifest": "corpus",
    "write_manifest": "corpus",
    "Batch": "dataset",
    "BucketBatchSampler": "dataset",
    "SpeechDataset": "dataset",
    "collate": "dataset",
    "FeatureConfig": "features",
    "LogMelFeatures": "features",
    "SpecAugment": "features",
    "SpecAugmentConfig": "features",
    "Tokenizer": "tokenizer",
    "TokenizerConfig": "tokenizer",
    "TokenizerError": "tokenizer",
}

__all__ = [
    "AudioError",
    "Batch",
    "BucketBatchSampler",
    "FeatureConfig",
    "LogMelFeatures",
    "SpecAugment",
    "SpecAugmentConfig",
    "SpeechDataset",
    "Tokenizer",
    "TokenizerConfig",
    "TokenizerError",
    "Utterance",
    "collate",
    "load_audio",
    "read_corpus",
    "read_librispeech",
    "read_manifest",
    "write_manifest",
]


__getattr__ = lazy_getattr(__name__, _HOME)
