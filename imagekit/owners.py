"""Set owners in a staged tree; run under fakeroot, so the changes are recorded, not made.

    python -m imagekit.owners STAGE LISTING UID

LISTING holds NUL-separated guest paths (``/app/main.py``) that belong to UID:UID; every
other path keeps fakeroot's default owner, root.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    stage, listing, owner = Path(argv[0]), Path(argv[1]), int(argv[2])
    text = listing.read_text()
    for guest_path in filter(None, text.split("\0")):
        os.lchown(stage / guest_path.lstrip("/"), owner, owner)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
