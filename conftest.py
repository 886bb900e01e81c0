"""Settings shared by tests/ and hil_tests/."""

from hypothesis import settings

# 2-core CI machines make hypothesis's default 200 ms per-example deadline flaky.
settings.register_profile("cellctl", deadline=None, max_examples=100)
settings.load_profile("cellctl")
