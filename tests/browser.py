"""A report as a reader opens it: served on 127.0.0.1 and loaded in Debian's headless Chromium, which
says what each image rendered as (its alt text and natural size; 0 x 0 is a picture that failed)."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium; .ci/run installs it)")

# Loaded beside the report: once the report has loaded in the frame, list its images as they rendered.
HARNESS = """<!doctype html><meta charset=utf-8><iframe id=page src="{name}" width=1000 height=800></iframe>
<script>
window.addEventListener("load", () => {{
  const images = [...document.getElementById("page").contentDocument.images];
  const found = images.map(image => [image.alt, image.naturalWidth, image.naturalHeight]);
  document.body.insertAdjacentHTML("beforeend", "<pre id=rendered>" + JSON.stringify(found) + "</pre>");
}});
</script>"""
# Without these, Chromium reaches for the network (this machine has none) at every start.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000", "--dump-dom"]


def rendered_images(report: Path) -> list[tuple[str, int, int]]:
    """(alt text, width, height) of every image of ``report`` as Chromium rendered it."""
    (report.parent / "harness.html").write_text(HARNESS.format(name=report.name))
    handler = functools.partial(_Quiet, directory=str(report.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as profile:
            dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
                                  f"http://127.0.0.1:{server.server_port}/harness.html"],
                                 capture_output=True, text=True, timeout=120).stdout
    finally:
        server.shutdown()
    found = re.search(r'<pre id="rendered">(.*?)</pre>', dom, flags=re.S)
    assert found, f"Chromium did not render the harness page: {dom[-500:]!r}"
    return [tuple(item) for item in json.loads(found.group(1).replace("&quot;", '"'))]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass
