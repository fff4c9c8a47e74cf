"""Training, evaluation and prediction (DESIGN §6-7). Importing this imports torch."""

from tributary_core.train.evaluate import evaluate
from tributary_core.train.model import RelationalTransformer, attention_masks
from tributary_core.train.predict import Predictor, predict
from tributary_core.train.trainer import Run, TrainConfig, load_run, read_metrics, train

__all__ = ["RelationalTransformer", "Run", "TrainConfig", "attention_masks", "evaluate", "load_run",
           "predict", "Predictor", "read_metrics", "train"]
