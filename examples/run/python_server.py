#!/usr/bin/env python3
"""A Python standard-library HTTP server that accepts its socket from forklift.

Shows `forklift run`: forklift binds, starts N copies of this script with the listening
socket as fd 3 (LISTEN_FDS=1, LISTEN_PID, FORKLIFT_WORKER_ID), restarts them if they crash,
and reloads them on SIGHUP. The script says READY=1 on NOTIFY_SOCKET when it serves, as it
would under systemd, and stops gracefully on SIGTERM.

    forklift run --listen 127.0.0.1:8000 --workers 4 --ready-notify -- \
        python3 examples/run/python_server.py
    curl -i http://127.0.0.1:8000/
"""
import http.server
import os
import signal
import socket
import sys
import threading

SD_LISTEN_FDS_START = 3


def inherited_socket():
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("python_server: no socket from forklift (LISTEN_PID is not this process)")
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        sys.exit("python_server: LISTEN_FDS says no socket was passed")
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    # Every worker waits on the same socket: when a connection comes, all of them wake and one
    # wins it. A blocking accept() in the others would then hang until the next connection,
    # deaf to shutdown(); non-blocking, they just go back to waiting.
    sock.setblocking(False)
    return sock


def notify(state):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(state.encode())


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"greeting!!!"
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-forklift-worker", str(os.getpid()))
        self.send_header("x-worker-id", os.environ.get("FORKLIFT_WORKER_ID", "?"))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("request %s" % (fmt % args), flush=True)


class InheritedServer(http.server.ThreadingHTTPServer):
    def __init__(self, sock):
        super().__init__(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket = sock
        self.daemon_threads = True


def main():
    server = InheritedServer(inherited_socket())
    # TERM: stop accepting; serve_forever returns and the process exits.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print("worker %s (pid %d) serving" % (os.environ.get("FORKLIFT_WORKER_ID"), os.getpid()),
          flush=True)
    notify("READY=1")
    server.serve_forever()


if __name__ == "__main__":
    main()
