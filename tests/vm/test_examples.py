"""The example projects, built and booted as a user would: the web app answers over HTTP."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from imagekit.cache import BuildCache
from imagekit.image import BuildRequest, build
from vmtest import Machine

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def webapp_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = tmp_path_factory.mktemp("webapp") / "webapp.raw"
    with BuildCache() as cache:
        build(BuildRequest(spec=str(EXAMPLES / "webapp"), output=image), cache=cache)
    return image


@pytest.mark.vm
def test_webapp_serves_http_and_stops_cleanly(webapp_image: Path) -> None:
    """The declared port is forwarded, GET / answers as uid 1000, the power button stops it."""
    with Machine(webapp_image, accel="tcg") as vm:
        vm.wait_for_console(r"serving on port 8080")
        (host_port,) = [f.host_port for f in vm.forwards if f.guest_port == 8080]
        with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=30) as response:
            assert response.status == 200
            body = json.loads(response.read())
        assert body["hello"] == "from a vorteil micro-VM"
        assert body["uid"] == 1000
        assert body["host"].startswith("webapp-")
        vm.powerdown()
        assert vm.wait_for_shutdown() == 0
        assert "sending signal 'terminated'" in vm.console
        assert "stopped" in vm.console
        assert "applications terminated" in vm.console
