"""Host probe: a free TCP port, or whether a given one is free.

argv: BIND PORT. PORT "auto" prints a free port's number; a number prints "free" or "busy".
Read by tools/serve/host.py ``check_port``.
"""

import socket
import sys

bind, port = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((bind, 0 if port == "auto" else int(port)))
    print(s.getsockname()[1] if port == "auto" else "free")
except OSError:
    print("busy")
finally:
    s.close()
