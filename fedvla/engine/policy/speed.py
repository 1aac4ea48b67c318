"""What makes a SmolVLA train faster on a GPU without changing what it learns.

- The frozen VLM held in bfloat16: lerobot itself loads the pretrained VLM in bfloat16; under
  autocast its matrix products run in bfloat16 anyway, so holding it so halves its memory and
  saves casting every weight on every step. Trainable weights (the expert) stay float32.
- The training loss without host synchronisation: SmolVLAPolicy.forward reads four scalars back
  with .item() for its log dict, which stalls the CPU until the GPU has finished the forward pass
  on every step. flow_loss reduces the same per-element losses the same way, without them.
"""

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lerobot.policies.smolvla import SmolVLAPolicy


def hold_frozen_in_bf16(policy: torch.nn.Module) -> int:
    """Cast every frozen parameter to bfloat16 in place; the number cast."""
    cast = 0
    for parameter in policy.parameters():
        if not parameter.requires_grad and parameter.dtype == torch.float32:
            parameter.data = parameter.data.to(torch.bfloat16)
            cast += 1
    return cast


def flow_loss(policy: "SmolVLAPolicy", batch: dict[str, Any]) -> torch.Tensor:
    """SmolVLAPolicy.forward's mean loss (reduction "mean"), left on the device."""
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    if policy.config.adapt_to_pi_aloha:
        loss, _ = policy.forward(batch)
        return loss
    images, img_masks = policy.prepare_images(batch)
    state = policy.prepare_state(batch)
    actions = policy.prepare_action(batch)
    losses = policy.model.forward(
        images,
        img_masks,
        batch[OBS_LANGUAGE_TOKENS],
        batch[OBS_LANGUAGE_ATTENTION_MASK],
        state,
        actions,
    )
    losses = losses[:, :, : policy.config.action_feature.shape[0]]
    losses = losses[:, :, : policy.config.max_action_dim]
    is_pad = batch.get("action_is_pad")
    if is_pad is None:
        return losses.mean()
    in_bound = ~is_pad
    losses = losses * in_bound.unsqueeze(-1)
    valid = (in_bound.sum() * losses.shape[-1]).clamp_min(1)
    return losses.sum() / valid
