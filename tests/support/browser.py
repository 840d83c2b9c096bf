"""Where the browser tests find Debian's chromium, and how they start it (headless, no GPU, no sandbox,
nothing fetched in the background)."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
