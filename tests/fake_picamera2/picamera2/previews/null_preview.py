"""Stand-in for picamera2.previews.null_preview: the thread that runs the camera's event loop.

As picamera2/previews/null_preview.py (0.3.x): a daemon thread (unnamed) selects on the
camera's notify pipe and calls Picamera2.process_requests (thread_func, lines 12-29), which
calls pre_callback; handle_request logs and RE-RAISES whatever escapes it (lines 78-88), so
one exception ends the thread, and with it every later frame and every job dispatched to it.
"""

from __future__ import annotations

import logging
import selectors
import threading
from typing import Any

_log = logging.getLogger(__name__)


class NullPreview:
    def __init__(self, x: Any = None, y: Any = None, width: Any = None, height: Any = None,
                 transform: Any = None) -> None:
        self.size = (width, height)
        self._abort = threading.Event()
        self._started = threading.Event()
        self.picam2: Any = None
        self.thread: threading.Thread | None = None

    def thread_func(self, picam2: Any) -> None:
        sel = selectors.DefaultSelector()
        sel.register(picam2.notifyme_r, selectors.EVENT_READ, self.handle_request)
        self._started.set()
        while not self._abort.is_set():
            for key, _ in sel.select(0.2):
                picam2.notifymeread.read()
                key.data(picam2)

    def start(self, picam2: Any) -> None:
        self.picam2 = picam2
        picam2.attach_preview(self)
        self._started.clear()
        self._abort.clear()
        self.thread = threading.Thread(target=self.thread_func, args=(picam2,), daemon=True)
        self.thread.start()
        self._started.wait()

    def render_request(self, completed_request: Any) -> None:
        pass

    def handle_request(self, picam2: Any) -> None:
        try:
            picam2.process_requests(self)
        except Exception as e:
            _log.exception("Exception during process_requests()", exc_info=e)
            raise

    def stop(self) -> None:
        self._abort.set()
        assert self.thread is not None
        self.thread.join()
        self.picam2.detach_preview()
        self.picam2 = None
