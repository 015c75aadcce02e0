"""The generated FastAPI app, plus the route the bench needs: 20 ms of non-blocking I/O."""

import asyncio

from my_service.core.app import app


@app.get("/io")
async def io() -> dict[str, str]:
    await asyncio.sleep(0.02)
    return {"status": "ok"}
