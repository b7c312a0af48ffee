"""Training: the one loop every trainer shares, its config, checkpoints and metrics.

| file            | what it holds                                                        |
|-----------------|----------------------------------------------------------------------|
| `config.py`     | `TrainConfig`: steps, batch, learning-rate schedule, AdamW, intervals |
| `trainer.py`    | `Trainer`: steps, evaluation, logging, checkpoints, signals, NaN stop |
| `step.py`       | how a step runs: eager or compiled, devices, dtype, reads to the host |
| `run_folder.py` | what a checkpoint holds, the exported model, resuming a run         |
| `checkpoint.py` | atomic checkpoint folders that resume exactly                        |
| `metrics.py`    | the metrics JSONL log and the loss-curve PNG                          |
| `sft.py`        | supervised fine-tuning's loss on packed conversations                 |
| `preference.py` | the Bradley-Terry (reward model) and DPO losses                       |
| `distill.py`    | knowledge distillation's loss: KL to a teacher, mixed with the labels |
"""

from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .metrics import MetricsLog, plot_losses, read_metrics
from .trainer import Trainer, TrainingDiverged, TrainResult, language_model_loss

__all__ = [
    "MetricsLog",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "language_model_loss",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "plot_losses",
    "read_metrics",
    "save_checkpoint",
]
