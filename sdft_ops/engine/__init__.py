"""The SDFT engine (and its SFT baseline): config, losses, teacher, sampling, training loop."""

from sdft_ops.engine.config import SDFTConfig, TeacherContext
from sdft_ops.engine.loop import TrainingDiverged, TrainResult, train

__all__ = ["SDFTConfig", "TeacherContext", "TrainResult", "TrainingDiverged", "train"]
