"""Settings read from the environment: the one place that names Switchyard's environment variables.

Everything is read when a function is called, never at import time, so a test or a process that
sets a variable before calling sees it.

    SWITCHYARD_REDIS_URL   the state store (`redis://HOST:PORT[/DB]`) when `--redis` is not given
"""

from __future__ import annotations

import os
from collections.abc import Mapping

REDIS_URL_ENV = "SWITCHYARD_REDIS_URL"


def state_store_url(given: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The state store URL: `given` (a `--redis` option), else `$SWITCHYARD_REDIS_URL`, else None
    (the embedded store). An empty value counts as unset."""
    if given:
        return given
    return (os.environ if environ is None else environ).get(REDIS_URL_ENV) or None
