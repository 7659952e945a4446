"""Neural-network building blocks with PyTorch's names: modules, models, losses, optimizers."""
from .loss import accuracy, cross_entropy, l2_penalty, nll_loss, penalized_weights
from .models import MLP, Bigger, Longer, Normal, build_model, MODELS
from .module import Linear, Module
from .optim import SGD, Adam, Optimizer

__all__ = ["MLP", "MODELS", "Adam", "Bigger", "Linear", "Longer", "Module", "Normal", "Optimizer", "SGD",
           "accuracy", "build_model", "cross_entropy", "l2_penalty", "nll_loss",
           "penalized_weights"]
