"""The original repository's two toy experiments (not in the paper), each a module with its own CLI:

    python -m zoneout.toys.semantic_consistency --scale paper --seeds 0 1 2
    python -m zoneout.toys.seq2seq_addition --scale paper --seeds 0 1 2

Settings live in experiments/toy_*.yaml; results go to results/<scale>/toy_*.{md,json,png}."""
