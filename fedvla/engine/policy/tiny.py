"""The built-in tiny SmolVLA: a SmolVLA small enough for CPU tests, built with no network.

The VLM folder (a tiny SmolVLM config, a tokenizer trained here with `tokenizers`, and a
SmolVLMProcessor) is generated once into `<data_dir>/assets/tiny_vlm/`. Generation is
idempotent and file-locked, so Ray actors that start together do not race.
"""

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lerobot.policies.smolvla import SmolVLAConfig

TINY_VLM_FOLDER = "tiny_vlm"
TINY_IMAGE_SIZE = 32
"""Pixels on a side of the vision tower's input; SmolVLA resizes (with padding) to this."""
TINY_PATCH_SIZE = 8
TINY_VOCAB_SIZE = 512
_MARKER = "complete.json"
_FORMAT = "1"

SPECIAL_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}

_CORPUS = """
pick up the red cube and place it in the box
push the green block to the left
move the blue object to the right target
grasp the yellow cup put it on the plate
open the drawer close the gripper lift the arm
stack the cubes sort the objects by colour
reach the goal rotate the wrist slowly
"""


def tiny_vlm_dir(data_dir: Path) -> Path:
    """The tiny VLM folder under the data dir, generated on first use."""
    target = data_dir / "assets" / TINY_VLM_FOLDER
    if (target / _MARKER).is_file() and (target / _MARKER).read_text() == _FORMAT:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{TINY_VLM_FOLDER}.lock"):
        if (target / _MARKER).is_file() and (target / _MARKER).read_text() == _FORMAT:
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{TINY_VLM_FOLDER}-", dir=target.parent))
        try:
            write_tiny_vlm(staging)
            (staging / _MARKER).write_text(_FORMAT)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_smolvla_config(data_dir: Path, *, state_dim: int, action_dim: int) -> "SmolVLAConfig":
    """SmolVLAConfig for the tiny VLM; features are set later from the dataset."""
    from lerobot.policies.smolvla import SmolVLAConfig

    return SmolVLAConfig(
        vlm_model_name=str(tiny_vlm_dir(data_dir)),
        load_vlm_weights=False,
        num_vlm_layers=2,
        num_expert_layers=2,
        self_attn_every_n_layers=2,
        expert_width_multiplier=0.75,
        resize_imgs_with_padding=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE),
        chunk_size=4,
        n_action_steps=4,
        num_steps=2,
        max_state_dim=max(8, state_dim),
        max_action_dim=max(8, action_dim),
        tokenizer_max_length=16,
        scheduler_warmup_steps=0,
        device="cpu",
        push_to_hub=False,
    )


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_tiny_vlm(folder: Path) -> None:
    """Write the tiny VLM folder: SmolVLM config, trained tokenizer, SmolVLMProcessor."""
    from transformers import (
        PreTrainedTokenizerFast,
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
    )
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens=SPECIAL_TOKENS,
    )
    image_token_id = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["image_token"])
    fields: dict[str, Any] = dict(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": TINY_PATCH_SIZE,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 512,
            "pad_token_id": tokenizer.pad_token_id,
        },
        scale_factor=2,
        image_token_id=image_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = SmolVLMConfig(**fields)
    patches = (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2
    size = {"longest_edge": TINY_IMAGE_SIZE}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size=size, max_image_size=size),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(size=size, max_image_size=size),
        image_seq_len=patches // (config.scale_factor**2),
    )
    config.save_pretrained(folder)
    processor.save_pretrained(folder)


def _train_tokenizer():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<unk>", "<pad>", "<|im_start|>", *SPECIAL_TOKENS.values()]
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB_SIZE, special_tokens=specials)
    tokenizer.train_from_iterator(_CORPUS.split("\n") * 4, trainer=trainer)
    return tokenizer
