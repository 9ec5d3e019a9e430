"""Runs of the method (DESIGN.md §2, §2.12): one run as stages (pipeline.py), masks of every comparison method
(masks.py) from the registry of methods (methods.py), several methods on the same data (compare.py), grids of runs
(sweep.py) and their trade-off frontier (frontier.py)."""
