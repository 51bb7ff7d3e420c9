"""``python -m layersync`` (also what ``torchrun -m layersync`` runs)."""

from layersync.cli import main

main()
