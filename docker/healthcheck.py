"""The image's HEALTHCHECK: GET the health route, exit 0 on HTTP 2xx, 1 otherwise.

Usage: python healthcheck.py URL. Sends ``Authorization: Bearer $LAYERSYNC_TOKEN`` when that is set,
so the check keeps working when the server requires a token. Standard library only (the base image
has no curl).
"""

import http.client
import os
import sys
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: healthcheck.py URL", file=sys.stderr)
        return 2
    headers = {}
    token = os.environ.get("LAYERSYNC_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(argv[0], headers=headers), timeout=5) as response:
            return 0 if 200 <= response.status < 300 else 1
    # refused, timed out, 4xx/5xx (HTTPError is an OSError), garbled: unhealthy, and say why in `docker inspect`
    except (OSError, http.client.HTTPException, ValueError) as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
