"""Recipes: whole runs built from the layers below - data, model, training loop, sampling.

| file          | what it runs                                                           |
|---------------|------------------------------------------------------------------------|
| `pretrain.py` | `tinyllm pretrain`: tokenize a corpus, train a model, sample from it   |
| `posttrain.py`| what the post-training runs share: configs, the chat model, held out   |
| `sft.py`      | `tinyllm sft`: supervised fine-tuning of a pretrained model on chats   |
| `lora.py`     | `tinyllm lora`: the same with LoRA adapters, written in PEFT's format  |
| `reward.py`   | `tinyllm reward`: a reward model trained on preference pairs           |
| `dpo.py`      | `tinyllm dpo`: preference tuning of an SFT model against itself frozen |
| `distill.py`  | `tinyllm distill`: a smaller student trained on a chat model's outputs |
| `evaluation.py` | `tinyllm eval`: a chat model measured on held-out tasks              |
| `speedrun.py` | `tinyllm speedrun`: the main job, end to end, with a report            |
| `scaling.py`  | a family of small models at fixed compute budgets, and a power-law fit |
"""

from .pretrain import PretrainConfig, PretrainRun, pretrain, sample_texts
from .scaling import (
    ScalingLaw,
    ScalingPoint,
    chinchilla_optimal,
    compute_optimal,
    fit_scaling_law,
    model_family,
    plot_scaling,
    scaling_sweep,
)
from .speedrun import speedrun

__all__ = [
    "PretrainConfig",
    "PretrainRun",
    "ScalingLaw",
    "ScalingPoint",
    "chinchilla_optimal",
    "compute_optimal",
    "fit_scaling_law",
    "model_family",
    "plot_scaling",
    "pretrain",
    "sample_texts",
    "scaling_sweep",
    "speedrun",
]
