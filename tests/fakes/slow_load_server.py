"""The retrieval server's command line with a load that takes a given time: a stand-in for
wiki-18's minutes of loading, for tests of what a signal does meanwhile.

    python -m tests.fakes.slow_load_server LOAD_S [retrieval_server flags...]
"""

from __future__ import annotations

import functools
import sys
import threading

from local_dense_retriever import app, retrieval_server


def main(argv: list[str]) -> int:
    load_s = float(argv[0])

    def slow_load(config):
        threading.Event().wait(load_s)
        raise RuntimeError(f"the stand-in loads nothing; it only took {load_s:g} s")

    app.create_app = functools.partial(app.create_app, load=slow_load)
    return retrieval_server.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
