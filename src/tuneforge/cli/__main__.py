"""`python -m tuneforge.cli` (what torchrun and `accelerate launch -m` run)."""

from tuneforge.cli import main

main()
