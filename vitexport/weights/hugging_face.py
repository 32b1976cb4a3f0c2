"""What every family's Hugging Face filter shares: transformers' names for a transformer block's modules, and the
fusion of its separate query/key/value projections into timm's one qkv matrix."""

from __future__ import annotations

import torch

from vitexport.errors import CheckpointError

# transformers' block modules -> timm's: transformers 4 names (the Hub checkpoints) and transformers 5 names.
BLOCK = {
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
QKV = "query|key|value|q_proj|k_proj|v_proj"  # regex alternatives; the first letter says which


def fuse_qkv(parts: dict[tuple[str, str], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{(block, "weight"|"bias"): {"q": .., "k": .., "v": ..}} -> {"<block>.attn.qkv.<kind>": (3D, ...)}: HF keeps
    separate Q, K, V projections; timm fuses them into one matrix, in that order."""
    out = {}
    for (block, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise CheckpointError(f"{block} has only {sorted(qkv)} of its query/key/value {kind}s")
        out[f"{block}.attn.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return out
