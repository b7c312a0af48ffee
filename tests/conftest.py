"""Settings every test shares: nothing is written into the user's cache, and nothing fails
for being slow.

- Each test gets its own empty cache folder, named in ``$TINYLLM_CACHE`` (see
  ``tinyllm.data.resolve_cache_dir``): corpus tokens and tokenizers the code under test
  caches land under pytest's temporary directory, never in ``~/.cache/tinyllm``, and no test
  reads what another one cached. Child processes a test starts inherit the variable.
- Hypothesis has no deadline and no too-slow health check: both measure wall-clock time,
  which a busy machine stretches.
"""

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("tinyllm", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tinyllm")


@pytest.fixture(autouse=True)
def tinyllm_cache(tmp_path_factory, monkeypatch):
    """This test's cache folder: fresh, empty, and apart from ``tmp_path``."""
    path = tmp_path_factory.mktemp("tinyllm_cache")
    monkeypatch.setenv("TINYLLM_CACHE", str(path))
    return path
