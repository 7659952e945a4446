"""``python -m mocrograd`` is ``python -m mocrograd.train``."""
import sys

from .train import main

sys.exit(main())
