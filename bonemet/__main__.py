"""``python -m bonemet``: the command line (what ``torchrun -m bonemet seg train ...`` starts in each process)."""

from .cli.main import main

main()
