"""Open an HTML file in headless Chromium and say which of its images failed to load.

A helper for the report tests (imported by module name; not a test file). Chromium is Debian's
``chromium`` package, installed by ``scripts/install_system_deps.sh``.
"""

from __future__ import annotations

import html as htmlmod
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["chromium", "images_in_chromium", "INSTALL_HINT"]

INSTALL_HINT = "Chromium is missing: run `bash scripts/install_system_deps.sh` (as root; `make test` does it)"

# Runs after every image has loaded or failed (window 'load'); writes the verdict into the DOM, which
# --dump-dom then prints.
_PROBE = """
<script>
(function () {
  function check() {
    var imgs = Array.prototype.slice.call(document.images);
    var out = {n_images: imgs.length, broken: imgs.filter(function (im) {
      return !(im.complete && im.naturalWidth > 0);
    }).map(function (im) { return im.getAttribute("src"); })};
    var pre = document.createElement("pre");
    pre.id = "medxai-check";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  if (document.readyState === "complete") { check(); } else { window.addEventListener("load", check); }
})();
</script>
"""
_RESULT = re.compile(r'<pre id="medxai-check">(.*?)</pre>', re.S)


def chromium() -> str | None:
    """Path of the Chromium executable, or None if it is not installed."""
    return shutil.which("chromium")


def images_in_chromium(html: Path, timeout: float = 60) -> dict:
    """Load ``html`` in headless Chromium and report its images.

    A sibling copy with a probe script is loaded (beside the original, so relative ``src`` paths
    resolve the same) and removed afterwards.

    Parameters
    ----------
    html : Path
        The HTML file.
    timeout : float
        Seconds before Chromium is killed.

    Returns
    -------
    dict
        ``{"n_images": int, "broken": [src, ...]}``: how many ``<img>`` the page has, and the ``src``
        attribute (as written) of each one that did not load.

    Raises
    ------
    RuntimeError
        If Chromium is not installed, fails, or the probe never ran.
    """
    exe = chromium()
    if exe is None:
        raise RuntimeError(INSTALL_HINT)
    html = Path(html).resolve()
    text = html.read_text(encoding="utf-8")
    i = text.lower().rfind("</body>")
    probed = text[:i] + _PROBE + text[i:] if i >= 0 else text + _PROBE
    copy = html.with_name(".check_" + html.name)
    copy.write_text(probed, encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory(prefix="medxai-chromium-") as profile:
            cmd = [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-extensions",
                "--allow-file-access-from-files",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                copy.as_uri(),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    finally:
        copy.unlink(missing_ok=True)
    m = _RESULT.search(proc.stdout)
    if m is None:
        raise RuntimeError(
            f"Chromium (exit {proc.returncode}) printed no probe result for {html}; "
            f"stderr tail:\n{proc.stderr[-2000:]}\nstdout tail:\n{proc.stdout[-1000:]}"
        )
    result = json.loads(htmlmod.unescape(m.group(1)))
    return {"n_images": int(result["n_images"]), "broken": list(result["broken"])}
