"""One-click settings for the Unlearn tab: each preset gives a value to every control of forms.UNLEARN_CONTROLS
(what each does on the app's default items is measured in docs/RESULTS.md)."""

from __future__ import annotations

PRESETS = {
    "Forget Harry Potter, gently": {
        "loss": "npo", "p_percent": 0.5, "sigma2": "1e-6", "lr": 2e-4, "steps": 20, "alpha": 1.0, "beta": None,
        "seed": 0, "use_mask": True,
    },
    "Forget Harry Potter, aggressively": {
        "loss": "graddiff", "p_percent": 5.0, "sigma2": "1e-5", "lr": 1e-3, "steps": 40, "alpha": 0.5,
        "beta": None, "seed": 0, "use_mask": True,
    },
}
