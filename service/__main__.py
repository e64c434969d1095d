"""`python -m service`: run the API with uvicorn on HOST:PORT."""

from __future__ import annotations

import logging

import uvicorn

from service.app import create_app
from service.settings import get_settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = get_settings()
    # One process: vLLM's engine core runs in its own subprocess; scale out with replicas.
    uvicorn.run(create_app(s), host=s.host, port=s.port, log_level="info", timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
