"""The projects the VM tests build and boot, and the host side that drives them.

``probe/`` is a guest project: its ``app/probe.py`` runs in the VM and reports facts.
`projects.probe_vm` is a pytest plugin for the host: it builds the probe image once and boots
copies of it with other VCFGs. (Fixtures live here rather than in ``tests/vm/conftest.py``:
mypy checks ``tests`` as top-level modules, and a second ``conftest`` would clash with
``tests/conftest.py``.)
"""

import pytest

# Test modules import `projects.probe_vm` for its types before pytest loads it as a plugin.
pytest.register_assert_rewrite("projects.probe_vm")
