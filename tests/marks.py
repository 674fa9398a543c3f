"""Test tiers. `make test` (CI) runs every check once on the model family that exercises the most; `make test-all`
adds the same checks on the other families (`exhaustive`), which cost minutes and rarely fail where the first passed.
"""

import pytest


def exhaustive(*values):
    """A parametrize case that runs only in `make test-all`."""
    return pytest.param(*values, marks=pytest.mark.exhaustive)
