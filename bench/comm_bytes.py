"""Bytes per round per client for smolvla_base's shape, and what loading it costs.

The hub is unreachable here, so SmolVLM2-500M-Video-Instruct's config is written by hand from its
published architecture and the policy is built with random weights (the weights do not change
sizes or timings). SmolVLA keeps the first 16 of the 32 text layers and an action expert 0.75 as
wide. Writes bench/results/comm_bytes.json.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/comm_bytes.py
"""

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from safetensors.torch import save_file

from fedvla.engine.policy.loading import load_pretrained_fast, trainable_state
from fedvla.engine.policy.tiny import write_tiny_vlm

RESULTS = Path(__file__).parent / "results" / "comm_bytes.json"

SMOLVLM2_500M_VIDEO = {
    "model_type": "smolvlm",
    "architectures": ["SmolVLMForConditionalGeneration"],
    "image_token_id": 49190,
    "scale_factor": 4,
    "tie_word_embeddings": False,
    "vocab_size": 49280,
    "text_config": {
        "model_type": "llama",
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "head_dim": 64,
        "vocab_size": 49280,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "model_type": "smolvlm_vision",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
    },
}


def smolvlm2_folder(folder: Path) -> Path:
    """A VLM folder with SmolVLM2-500M's config (and the tiny tokenizer and processor)."""
    write_tiny_vlm(folder)
    (folder / "config.json").write_text(json.dumps(SMOLVLM2_500M_VIDEO, indent=2))
    return folder


def smolvla_base_config(vlm: Path) -> Any:
    from lerobot.configs import FeatureType, PolicyFeature
    from lerobot.policies.smolvla import SmolVLAConfig

    config = SmolVLAConfig(
        vlm_model_name=str(vlm),
        load_vlm_weights=False,
        num_vlm_layers=16,
        expert_width_multiplier=0.75,
        device="cpu",
        push_to_hub=False,
    )
    config.input_features = {
        "observation.state": PolicyFeature(FeatureType.STATE, (6,)),
        **{
            f"observation.images.camera{i}": PolicyFeature(FeatureType.VISUAL, (3, 256, 256))
            for i in (1, 2, 3)
        },
    }
    config.output_features = {"action": PolicyFeature(FeatureType.ACTION, (6,))}
    return config


def main() -> None:
    from lerobot.policies.smolvla import SmolVLAPolicy

    from fedvla.engine.federation.transport import encode_arrays

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as scratch:
        vlm = smolvlm2_folder(Path(scratch) / "smolvlm2")
        config = smolvla_base_config(vlm)
        started = time.perf_counter()
        policy = SmolVLAPolicy(config)
        plain_construct_s = time.perf_counter() - started

        state = policy.state_dict()
        trainable = trainable_state(policy)
        weights = Path(scratch) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, weights)
        del policy

        started = time.perf_counter()
        fast = load_pretrained_fast(config, weights)
        meta_load_s = time.perf_counter() - started
        assert all(not b.is_meta for b in fast.buffers())

        params_total = sum(p.numel() for p in fast.parameters())
        params_trainable = sum(t.numel() for t in trainable.values())
        results = {
            "shape": "smolvla_base: SmolVLM2-500M-Video-Instruct, 16 of 32 text layers, "
            "expert width 0.75 (random weights)",
            "params_total": params_total,
            "params_trainable": params_trainable,
            "state_dict_bytes_float32": sum(t.numel() * t.element_size() for t in state.values()),
            "trainable_bytes_float32": params_trainable * 4,
            "wire_bytes_per_client_per_direction": {
                dtype: encode_arrays(trainable, dtype).count_bytes()
                for dtype in ("float32", "bfloat16", "float16")
            },
            "plain_construct_seconds": round(plain_construct_s, 3),
            "meta_device_load_seconds": round(meta_load_s, 3),
            "cpu_threads": torch.get_num_threads(),
        }
        results["trainable_mib_float32"] = round(results["trainable_bytes_float32"] / 2**20, 1)
        results["state_dict_mib_float32"] = round(results["state_dict_bytes_float32"] / 2**20, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
