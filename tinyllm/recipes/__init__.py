"""Recipes: whole runs built from the layers below - data, model, training loop, sampling.

| file          | what it runs                                                           |
|---------------|------------------------------------------------------------------------|
| `pretrain.py` | `tinyllm pretrain`: tokenize a corpus, train a model, sample from it   |
| `speedrun.py` | `tinyllm speedrun`: the main job, end to end, with a report            |
| `scaling.py`  | a family of small models at fixed compute budgets, and a power-law fit |
"""

from .pretrain import PretrainConfig, PretrainRun, pretrain, sample_texts

__all__ = ["PretrainConfig", "PretrainRun", "pretrain", "sample_texts"]
