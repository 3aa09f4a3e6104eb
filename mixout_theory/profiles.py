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
    """The profile named by ``$MIXOUT_PROFILE``: ``"smoke"`` (CI), ``"quick"`` (minutes) or ``"paper"``.

    Args:
        default (str): the profile when the variable is unset or empty.

    Returns:
        str: the profile (``ValueError`` for an unknown name).

    Example:
        >>> current_profile() in ("smoke", "quick", "paper")
        True
    """
    name = os.environ.get(ENV_VAR, default).strip().lower() or default
    if name not in PROFILES:
        raise ValueError(f"${ENV_VAR}={name!r} is not one of {', '.join(PROFILES)}")
    return name


def by_profile(smoke, quick, paper=None, profile: str | None = None):
    """Pick a size by profile: ``by_profile(200, 5_000, 50_000)`` is 200 under ``smoke``, 5000 ``quick``.

    Args:
        smoke: the value for the ``smoke`` profile.
        quick: the value for ``quick``.
        paper: the value for ``paper`` (default: ``quick``'s).
        profile (str, optional): the profile (default: :func:`current_profile`).

    Returns:
        the chosen value.

    Example:
        >>> by_profile(200, 5_000, 50_000, profile="paper"), by_profile(200, 5_000, profile="paper")
        (50000, 5000)
    """
    profile = profile or current_profile()
    return {"smoke": smoke, "quick": quick, "paper": quick if paper is None else paper}[profile]
