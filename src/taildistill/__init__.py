"""taildistill: knowledge distillation on long-tailed (class-imbalanced) data."""
from .version import __version__
