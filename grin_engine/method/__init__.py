"""What GRIN and GRUN do to a model (DESIGN.md §2): which weights hold the forget set (influence.py: candidates,
gradients, scores), which of them to change (selection.py), the noise (noise.py), the unlearning losses (losses.py),
the one training loop (training.py) that masked unlearning (unlearn.py) and GRUN's gated edits (grun.py) step
through, a run's change as small CPU data (patch.py), and scores kept for re-use (score_cache.py, score_summary.py).
"""
