"""`python -m depthprune_nb.cli` and `torchrun -m depthprune_nb.cli`: the `depthprune` command."""
from .prune import main

raise SystemExit(main())
