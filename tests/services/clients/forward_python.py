"""Sends COUNT records through Fluentd's Python client (PyPI fluent-logger), Message mode
with nanosecond EventTime. The library has no ack (require_ack_response is Fluentd's and
Fluent Bit's, not this client's): `emit` is True once the record is written to the socket.
Prints `sent TEXT` per True, then `done`.

usage: forward_python.py HOST PORT COUNT [PAUSE_S]
"""

import sys
import time

from fluent import sender

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
logger = sender.FluentSender("py", host=host, port=port, nanosecond_precision=True)
for i in range(count):
    if logger.emit("worker", {"log": f"py-{i}", "level": "info", "n": i}):
        print(f"sent py-{i}", flush=True)
    else:
        print(f"failed py-{i}: {logger.last_error}", flush=True)
    if pause:
        time.sleep(pause)
logger.close()
print("done", flush=True)
