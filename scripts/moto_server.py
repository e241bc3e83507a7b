"""moto's server with one request at a time.

moto stands in for DynamoDB in the tests, but its handlers are not atomic
under concurrent requests: two conditional writes (or two transactions) to
one item, arriving together, can both see the condition hold and both
succeed, which DynamoDB never allows. The history's offset allocation and
the registry's quota counter rely on exactly that guarantee, so the tests
run moto behind one lock: each request is handled whole before the next,
as DynamoDB's per-item atomicity promises. Connections stay concurrent
(keep-alive works); only the handlers are serialized.

Usage: python scripts/moto_server.py HOST PORT
"""

import signal
import sys
import threading

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def one_at_a_time(environ, start_response):
        with lock:
            # Run the handler to the end inside the lock.
            return list(app(environ, start_response))

    run_simple(
        host,
        port,
        one_at_a_time,
        threaded=True,
        use_reloader=False,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
