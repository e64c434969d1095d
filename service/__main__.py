"""`python -m service`: run the API with uvicorn on HOST:PORT."""

from __future__ import annotations

import os
import sys


def main() -> None:
    from service import fork_server
    from service.settings import get_settings

    s = get_settings()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", s.vllm_log_level.upper())  # read by vLLM when it is imported
    # transformers' load reports name the base model's folder: errors only, here and in the engine processes
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    fork_server.start(s.engine_fork_server)  # first: it imports vLLM on the other core while this one imports

    # Imported here, not at the top: an engine process (forked from the fork server, or spawned) imports the
    # parent's __main__ module first; with these at the top each would pay ~2.5 s of web-stack imports.
    import uvicorn

    from service import logging_setup, reaper
    from service.app import create_app
    from service.exceptions import EXIT_STARTUP_FAILED
    from service.http_protocol import protocol_for

    logging_setup.configure()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    app = create_app(s)
    # One process: vLLM's engine core runs in its own subprocess; scale out with replicas.
    # SIGTERM: uvicorn stops accepting, drains in-flight requests (up to SECCLF_DRAIN_TIMEOUT_S, longer than
    # the request deadline), then runs the lifespan exit. Orchestrators must wait longer than that.
    config = uvicorn.Config(
        app,
        host=s.host,
        port=s.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=s.drain_timeout_s,
        http=protocol_for(s),  # header size, count and read-time limits (service/http_protocol.py)
        timeout_keep_alive=s.http_keep_alive_s,
        limit_concurrency=s.http_limit_concurrency,
    )
    server = uvicorn.Server(config)
    reaper.start()  # the engine processes die with this one, even by SIGKILL
    app.state.server = server  # the watchdog asks it to stop (draining) when a model stays dead
    server.run()
    sys.exit(app.state.exit_code if server.started else EXIT_STARTUP_FAILED)


if __name__ == "__main__":
    main()
