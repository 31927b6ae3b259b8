"""How sure a sampled accuracy is: Wilson score intervals (right near 0 and 1, where a normal
approximation goes below 0 or above 1)."""

from __future__ import annotations

import math

Z95 = 1.959964


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The 95% interval of a proportion ``successes / total``; (0, 1) when there is no data."""
    if total <= 0:
        return 0.0, 1.0
    share = successes / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)
