"""Imported ONLY by a multiprocessing forkserver, through ``set_forkserver_preload`` (``serve/workers.py``): the
forkserver then gets SIGKILL when the server that started it dies, instead of tearing down a torch-loaded
interpreter for seconds after ``kill -9`` of the server (once its main thread starts that teardown, the
watchdog thread cannot run). Importing it anywhere else would bind that process to its parent, so it acts only
in a forkserver.

PR_SET_PDEATHSIG fires when the parent *thread* that started the forkserver exits: ``serve/workers.py`` starts it
from the event loop's thread (the server's main thread). Should it die anyway, multiprocessing starts a new
forkserver on the next worker (re)start (``ForkServer.ensure_running``).
"""
import sys

from genloom.core.supervision import bind_to_parent

# a forkserver runs as `python -c 'from multiprocessing.forkserver import main; main(...)'`
if sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules:
    bind_to_parent()
