"""The example program: print a greeting and a few facts about the VM, then exit 0."""

import os
import platform

print(os.environ.get("GREETING", "hello"))
print(f"python {platform.python_version()} on {platform.uname().release}, pid {os.getpid()}")
