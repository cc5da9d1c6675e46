"""`clara train`: the three CLaRa training stages (scp, instruct, e2e), resumable.

    from clara_cli.train import TrainConfig, train
    result = train(TrainConfig("scp", "pretrain.jsonl", "ckpt/scp", steps=100))

See docs/TRAINING.md for the data formats, the stages and the default-model recipe.
"""

from .data import STAGES, read_records
from .loop import TrainConfig, TrainResult, export_model, kept_steps_dir, train
from .topk import differentiable_topk

__all__ = ["STAGES", "TrainConfig", "TrainResult", "differentiable_topk", "export_model", "kept_steps_dir",
           "read_records", "train"]
