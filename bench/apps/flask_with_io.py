"""The generated Flask app, plus the route the bench needs: 20 ms of blocking I/O."""

import time

from my_service.core.app import app


@app.get("/io")
def io() -> dict[str, str]:
    time.sleep(0.02)
    return {"status": "ok"}
