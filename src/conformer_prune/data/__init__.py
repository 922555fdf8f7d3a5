"""Data: corpus readers, audio input, features, tokenizer, batching and synthetic speech."""

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
