"""Utterances to padded feature batches: dataset, length-bucketed batch sampler and collation."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from conformer_prune.data.audio import check_speeds, load_audio
from conformer_prune.data.corpus import Utterance
from conformer_prune.data.features import LogMelFeatures
from conformer_prune.data.tokenizer import Tokenizer
from conformer_prune.model.conformer import SUBSAMPLING, subsampled_length

__all__ = ["Batch", "BucketBatchSampler", "SpeechDataset", "collate"]

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """A padded batch. Shapes: feats (B, T, F), feat_lengths (B,), targets (B, U),
    target_lengths (B,), indices (B,) into the dataset."""

    feats: Tensor
    feat_lengths: Tensor
    targets: Tensor
    target_lengths: Tensor
    indices: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(
                t.to(device)
                for t in (
                    self.feats,
                    self.feat_lengths,
                    self.targets,
                    self.target_lengths,
                    self.indices,
                )
            )
        )


class SpeechDataset(Dataset[tuple[Tensor, Tensor, int]]):
    """Features and token ids of a list of utterances.

    For training, transcripts are tokenised up front, so a character the tokenizer cannot encode
    fails at once, naming the utterance. For evaluation (`training=False`) every utterance is kept
    and its reference stays text: it is decoded and scored whatever it holds. Features are computed
    on first access and kept in memory when `cache` is set (about 32 MB per hour of audio), so
    later epochs skip decoding and the STFT.

    Speed perturbation (`speeds`, training only) is Kaldi's: every utterance appears once per
    factor, resampled to that speed (`load_audio`), so (0.9, 1.0, 1.1) makes three entries of
    each (and an epoch three times as long). Entry `i` is utterance `utts[i]` at `speeds[i]`.

    Args:
        utts: the utterances.
        tokenizer: encodes transcripts.
        features: the shared front end.
        cache: keep features in memory.
        training: tokenise the transcripts and drop, with one counted warning each, utterances
            whose encoder output is shorter than their token sequence (CTC cannot align them) and
            utterances longer than `max_frames` (they would not fit a batch).
        max_frames: the training batch budget in feature frames (None: no limit).
        subsampling_factor: feature frames per encoder frame of the model (4, 8 or 16), which
            decides how short is too short.
        speeds: tempo factors each training utterance is used at (1.0: as recorded).
    """

    def __init__(
        self,
        utts: list[Utterance],
        tokenizer: Tokenizer,
        features: LogMelFeatures,
        cache: bool = True,
        training: bool = True,
        max_frames: int | None = None,
        subsampling_factor: int = SUBSAMPLING,
        speeds: Sequence[float] = (1.0,),
    ) -> None:
        check_speeds(list(speeds))
        if not training and list(speeds) != [1.0]:
            raise ValueError(f"speeds: perturbation is for training; found {list(speeds)} for evaluation")
        self.features = features.eval()
        self.sample_rate = features.config.sample_rate
        kept, kept_speeds, frames, tokens, too_short, too_long = [], [], [], [], [], []
        for utt in utts:
            if not training:
                kept.append(utt)
                kept_speeds.append(1.0)
                frames.append(self._frames(utt.duration))
                tokens.append(torch.zeros(0, dtype=torch.long))
                continue
            ids = tokenizer.encode(utt.text, where=f"utterance {utt.utt_id} ({utt.audio_path})")
            for speed in speeds:
                n = self._frames(utt.duration / speed)
                where = utt.utt_id if speed == 1.0 else f"{utt.utt_id} at speed {speed}"
                if subsampled_length(n, subsampling_factor) < len(ids):
                    too_short.append(where)
                elif max_frames is not None and n > max_frames:
                    too_long.append(where)
                else:
                    kept.append(utt)
                    kept_speeds.append(speed)
                    frames.append(n)
                    tokens.append(torch.tensor(ids, dtype=torch.long))
        if too_short:
            log.warning(
                "training skips %d of %d utterances too short for their transcripts (e.g. %s)",
                len(too_short),
                len(utts) * len(speeds),
                too_short[0],
            )
        if too_long:
            log.warning(
                "training skips %d of %d utterances longer than max_frames %d (e.g. %s)",
                len(too_long),
                len(utts) * len(speeds),
                max_frames,
                too_long[0],
            )
        if not kept:
            raise ValueError(
                f"no usable utterances in the corpus: {len(too_short)} too short for their "
                f"transcripts, {len(too_long)} longer than max_frames {max_frames}"
            )
        self.utts = kept
        self.speeds = kept_speeds
        self.tokens = tokens
        self.skipped_too_short = len(too_short)
        self.skipped_too_long = len(too_long)
        self.frames = frames
        self._cache: dict[int, Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.utts)

    def _frames(self, seconds: float) -> int:
        """Feature frames of `seconds` of audio, counted as the front end counts them (its
        `frame_count`: ours or NeMo's, one fewer)."""
        samples = torch.tensor([int(seconds * self.sample_rate)])
        return int(self.features.output_lengths(samples)[0])

    def load_features(self, index: int) -> Tensor:
        """(T, F) features of utterance `index`; errors name the utterance."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        utt = self.utts[index]
        try:
            audio = torch.from_numpy(load_audio(utt.audio_path, self.sample_rate, self.speeds[index]))
        except (OSError, ValueError) as err:
            raise type(err)(f"utterance {utt.utt_id}: {err}") from err
        with torch.no_grad():
            feats, lengths = self.features(audio[None], torch.tensor([audio.numel()]))
        feats = feats[0, : int(lengths[0])]  # without `pad_to`'s frames or the one NeMo does not count
        if self._cache is not None:
            self._cache[index] = feats
        return feats

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        return self.load_features(index), self.tokens[index], index


def padded_frames(frames: int, multiple: int) -> int:
    """`frames` rounded up to a multiple of `multiple`."""
    return -(-frames // multiple) * multiple


def collate(samples: list[tuple[Tensor, Tensor, int]], pad_frames_to: int = 1) -> Batch:
    """Pad features with zeros, the frame axis to a multiple of `pad_frames_to` (lengths unchanged),
    and targets with zeros (ignored beyond target_lengths)."""
    feats = [s[0] for s in samples]
    targets = [s[1] for s in samples]
    feat_lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    target_lengths = torch.tensor([t.numel() for t in targets], dtype=torch.long)
    padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    if extra := padded_frames(padded.shape[1], pad_frames_to) - padded.shape[1]:
        padded = torch.nn.functional.pad(padded, (0, 0, 0, extra))
    padded_targets = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True)
    indices = torch.tensor([s[2] for s in samples], dtype=torch.long)
    return Batch(padded, feat_lengths, padded_targets, target_lengths, indices)


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of utterances of similar length, each with at most `max_frames` padded frames.

    Utterances are sorted by length (ties broken at random per epoch), cut greedily into batches,
    and the batch order is shuffled per epoch with a generator seeded by ``seed + epoch``, so an
    interrupted run that resumes sees the same batches (mid-epoch: from the `start`-th batch of
    `set_epoch` on; the length stays the whole epoch's). With several
    replicas each rank takes every `num_replicas`-th batch of the same list. The first
    `sorted_epochs` epochs keep the batches short to long (SortaGrad, Amodei et al. 2016), which
    helps CTC leave its all-blank plateau sooner.

    Args:
        lengths: feature frames per utterance.
        max_frames: budget of padded frames (batch size x longest utterance) per batch.
        shuffle: randomise ties and batch order per epoch.
        seed: base seed.
        num_replicas: data-parallel world size.
        rank: this process's rank.
        sorted_epochs: epochs (from 0) whose batches run from shortest to longest.
        pad_frames_to: batches are padded to a multiple of this many frames (`collate`), and the
            budget counts the padded frames, so a batch's shape follows its padded length.
    """

    def __init__(
        self,
        lengths: list[int],
        max_frames: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        sorted_epochs: int = 0,
        pad_frames_to: int = 1,
    ) -> None:
        if pad_frames_to < 1:
            raise ValueError(f"pad_frames_to: expected a positive number of frames, found {pad_frames_to}")
        if max_frames < (longest := padded_frames(max(lengths), pad_frames_to)):
            raise ValueError(
                f"max_frames {max_frames} is smaller than the longest utterance ({longest} frames"
                f"{f', padded to a multiple of {pad_frames_to}' if pad_frames_to > 1 else ''})"
            )
        self.lengths = lengths
        self.pad_frames_to = pad_frames_to
        self.max_frames = max_frames
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.sorted_epochs = sorted_epochs
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate over `epoch`'s batches from the `start`-th on (a run resumed mid-epoch)."""
        self.epoch = epoch
        self.start = start

    def _batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.lengths)
        tie = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        order = sorted(range(n), key=lambda i: (self.lengths[i], tie[i]))
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            if (
                current
                and (len(current) + 1) * padded_frames(self.lengths[i], self.pad_frames_to) > self.max_frames
            ):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        if self.shuffle and self.epoch >= self.sorted_epochs:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[p] for p in perm]
        usable = len(batches) - len(batches) % self.num_replicas if self.num_replicas > 1 else len(batches)
        return batches[self.rank : usable : self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches()[self.start :])

    def __len__(self) -> int:
        return len(self._batches())
