"""Training of HDNNPs: data preparation, global extended Kalman filter and Adam, MPI.

Entry points: :func:`train` / :class:`Trainer` (config: :mod:`pyfragnn.training.config`),
``pyfragnn train CONFIG`` (:func:`register_cli`). The compiled part (weight derivatives of
energies and forces) is :class:`pyfragnn._core.TrainingStructure`.
"""
from .config import ConfigError, load_config, normalise_config
from .optim import Adam, KalmanFilter


def register_cli(subparsers):
    """Add the ``train`` subcommand (see :mod:`pyfragnn.training.cli`)."""
    from .cli import register_cli as _reg
    return _reg(subparsers)

__all__ = ["ConfigError", "load_config", "normalise_config", "Adam", "KalmanFilter",
           "register_cli", "train", "Trainer", "TrainResult"]


def __getattr__(name):
    if name in ("train", "Trainer", "TrainResult"):
        from . import trainer
        return getattr(trainer, name)
    raise AttributeError(name)
