"""The image's HEALTHCHECK: exit 0 when this container's driftrag endpoint answers ``/healthz``.

The image runs either the stream job (``driftrag run``: /healthz on ``DRIFTRAG_RUN__METRICS_PORT``, 9108 in the
image) or the query service (``driftrag serve``: /healthz on ``DRIFTRAG_INDEX__PORT``, default 8000); whichever
answers makes the container healthy. ``DRIFTRAG_HEALTHCHECK_URL`` checks one URL instead (a service on another port).
Standard library only, so it costs no start-up time.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def urls() -> list[str]:
    if explicit := os.environ.get("DRIFTRAG_HEALTHCHECK_URL"):
        return [explicit]
    job = os.environ.get("DRIFTRAG_RUN__METRICS_PORT") or "9108"
    query = os.environ.get("DRIFTRAG_INDEX__PORT") or "8000"
    return [f"http://127.0.0.1:{job}/healthz", f"http://127.0.0.1:{query}/healthz"]


def main() -> int:
    errors = []
    for url in urls():
        try:
            with urllib.request.urlopen(url, timeout=3) as r:  # noqa: S310 (fixed local URL)
                if 200 <= r.status < 300:
                    return 0
                errors.append(f"{url}: HTTP {r.status}")
        except Exception as e:  # connection refused, timeout, HTTP error: try the next one
            errors.append(f"{url}: {e}")
    print("unhealthy: " + "; ".join(errors), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
