"""Settings shared by tests/ and hil_tests/."""

import os
import tempfile

from hypothesis import settings

# 2-core CI machines make hypothesis's default 200 ms per-example deadline flaky.
settings.register_profile("cellctl", deadline=None, max_examples=100)
settings.load_profile("cellctl")

# In-process CLI runs log to a throwaway file, never to the user's state directory.
os.environ.setdefault(
    "CELLCTL_LOG_FILE", os.path.join(tempfile.mkdtemp(prefix="cellctl-tests-"), "cellctl.log")
)
