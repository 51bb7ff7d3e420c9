"""Shared fixtures of the video plugin's tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def opencv_videos() -> Path:
    """Folder of Debian opencv-doc's clips (vtest.avi, Megamind.avi, tree.avi): the installed
    package's examples folder or $LAYERSYNC_OPENCV_VIDEOS (e.g. after `apt-get download
    opencv-doc && dpkg-deb -x opencv-doc_*.deb /tmp/x`); skips the test when absent."""
    roots = (os.environ.get("LAYERSYNC_OPENCV_VIDEOS"), "/usr/share/doc/opencv-doc/examples/data")
    for root in roots:
        if root and all((Path(root) / f"{n}.avi").is_file() for n in ("vtest", "Megamind")):
            return Path(root)
    pytest.skip(
        "opencv-doc clips not found (apt-get install opencv-doc or LAYERSYNC_OPENCV_VIDEOS)"
    )
