"""Learning-rate schedule and batch arithmetic for the paper's recipe (pure).

The paper decays the learning rate to a final value by the end of training (SFT: cosine
5.5e-6 -> 1.1e-6; DPO: 1e-6 -> 1e-7). transformers has both shapes built in, so the trainer
only names them: ``cosine_with_min_lr`` (cosine to ``min_lr``) and ``polynomial`` with
``power=1`` (linear to ``lr_end``). No warmup: the paper describes none.
"""

from __future__ import annotations

from typing import Any

from srlm.config import TrainingSection


def lr_scheduler_args(cfg: TrainingSection) -> dict[str, Any]:
    """TrainingArguments keywords that decay ``learning_rate`` to ``final_learning_rate``."""
    if cfg.lr_schedule == "cosine":
        return {"lr_scheduler_type": "cosine_with_min_lr",
                "lr_scheduler_kwargs": {"min_lr": cfg.final_learning_rate}}
    return {"lr_scheduler_type": "polynomial",
            "lr_scheduler_kwargs": {"lr_end": cfg.final_learning_rate, "power": 1.0}}


def gradient_accumulation_steps(cfg: TrainingSection, world_size: int = 1) -> int:
    """Micro-batches per optimizer step so that one step sees ``batch_size`` examples."""
    per_step = cfg.per_device_batch_size * world_size
    if cfg.batch_size % per_step:
        raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of per_device_batch_size "
                         f"{cfg.per_device_batch_size} x {world_size} devices")
    return cfg.batch_size // per_step
