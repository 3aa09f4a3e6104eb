"""The one size knob shared by notebooks, tests and the command line.

``MIXOUT_PROFILE`` selects how big every computation is: ``smoke`` (CI, seconds), ``quick``
(minutes on a laptop, the notebooks' default) or ``paper`` (the full protocol).
"""

from __future__ import annotations

import os

PROFILES = ("smoke", "quick", "paper")
ENV_VAR = "MIXOUT_PROFILE"
DEFAULT = "quick"


def current_profile(default: str = DEFAULT) -> str:
    """Return the profile named by ``$MIXOUT_PROFILE`` (``default`` when unset)."""
    name = os.environ.get(ENV_VAR, default).strip().lower() or default
    if name not in PROFILES:
        raise ValueError(f"${ENV_VAR}={name!r} is not one of {', '.join(PROFILES)}")
    return name


def by_profile(smoke, quick, paper=None, profile: str | None = None):
    """Pick a size by profile: ``by_profile(200, 5_000, 50_000)`` (``paper`` defaults to ``quick``)."""
    profile = profile or current_profile()
    return {"smoke": smoke, "quick": quick, "paper": quick if paper is None else paper}[profile]
