"""tfwb trainer plugin: offline wandb runs on the shared volume, ready for the tfwb agent.

    run = tfwb_trainer.init(project="mnist", config={...}, sensitive=["samples/*"])
    ckpt = tfwb_trainer.TrainingCheckpoint(model)
    start = ckpt.restore()
    model.fit(..., initial_epoch=start.epoch,
              callbacks=[tfwb_trainer.MetricsCallback(50, batch_size, checkpoint=ckpt)])
    tfwb_trainer.finish()

    tfwb_trainer.sweep(sweep_config, train, count=10)   # offline sweeps, W&B's search engine
"""
from .best import BestKeeper
from .checkpoint import Restored, TrainingCheckpoint
from .custom_loop import StepLogger
from .evaluation import log_evaluation
from .session import CONFIG_KEY, current, finish, init
from .volume import RunsDirError

__all__ = [
    "BestKeeper", "CONFIG_KEY", "MetricsCallback", "Restored", "RunsDirError", "StepLogger",
    "TrainingCheckpoint", "current", "finish", "init", "log_evaluation", "sweep",
]


def __getattr__(name: str):
    # The Keras callback imports TensorFlow and wandb's Keras integration: only on first use,
    # so `init()` can refuse a bad volume before TensorFlow is even loaded.
    if name == "MetricsCallback":
        from .keras_callback import MetricsCallback

        return MetricsCallback
    if name == "sweep":  # a callable module: tfwb_trainer.sweep(config, train, count=N)
        import importlib

        return importlib.import_module(".sweep", __name__)
    raise AttributeError(name)
