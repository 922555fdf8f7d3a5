"""The small EncDecCTCModelBPE config the NeMo tests start from, laid out as NeMo's
conformer_ctc_bpe.yaml recipe: plain data, imported by the generator that runs under NeMo
(make_nemo_models.py) and by the NeMo-free tests (tests/test_nemo.py)."""

from __future__ import annotations

from typing import Any


def small_conformer_ctc(**overrides: Any) -> dict[str, Any]:
    """The config with `overrides`: a dict updates that section, anything else replaces the key."""
    cfg: dict[str, Any] = {
        "sample_rate": 16000,
        "tokenizer": {"dir": "tokenizer", "type": "bpe"},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000,
            "normalize": "per_feature",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": 80,
            "n_fft": 512,
            "log": True,
            "frame_splicing": 1,
            "dither": 0.00001,
            "pad_to": 0,
            "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": 80,
            "feat_out": -1,
            "n_layers": 3,
            "d_model": 64,
            "subsampling": "striding",
            "subsampling_factor": 4,
            "subsampling_conv_channels": 48,
            "causal_downsampling": False,
            "ff_expansion_factor": 4,
            "self_attention_model": "rel_pos",
            "n_heads": 4,
            "att_context_size": [-1, -1],
            "att_context_style": "regular",
            "xscaling": True,
            "untie_biases": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": 15,
            "conv_norm_type": "batch_norm",
            "conv_context_size": None,
            "dropout": 0.1,
            "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0,
            "dropout_att": 0.1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
            "feat_in": None,
            "num_classes": -1,
            "vocabulary": [],
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    cfg["decoder"]["feat_in"] = cfg["encoder"]["d_model"]
    return cfg


def hybrid_rnnt_ctc(cfg: dict[str, Any], pred_hidden: int = 32) -> dict[str, Any]:
    """`cfg` made an EncDecHybridRNNTCTCBPEModel config, laid out as NeMo's
    fastconformer_hybrid_transducer_ctc_bpe.yaml: its CTC decoder becomes `aux_ctc.decoder`, and an
    RNNT prediction network and joint (small) are added."""
    out = dict(cfg)
    d_model = cfg["encoder"]["d_model"]
    out["model_defaults"] = {"enc_hidden": d_model, "pred_hidden": pred_hidden, "joint_hidden": pred_hidden}
    out["aux_ctc"] = {
        "ctc_loss_weight": 0.3,
        "use_cer": False,
        "ctc_reduction": "mean_batch",
        "decoder": cfg["decoder"],
        "decoding": {"strategy": "greedy"},
    }
    out["decoder"] = {
        "_target_": "nemo.collections.asr.modules.RNNTDecoder",
        "normalization_mode": None,
        "random_state_sampling": False,
        "blank_as_pad": True,
        "prednet": {"pred_hidden": pred_hidden, "pred_rnn_layers": 1, "t_max": None, "dropout": 0.0},
    }
    out["joint"] = {
        "_target_": "nemo.collections.asr.modules.RNNTJoint",
        "log_softmax": None,
        "preserve_memory": False,
        "fuse_loss_wer": False,
        "jointnet": {"joint_hidden": pred_hidden, "activation": "relu", "dropout": 0.0},
    }
    out["decoding"] = {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}}
    out["loss"] = {"loss_name": "default"}
    return out
