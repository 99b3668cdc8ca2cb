#!/usr/bin/env python3
"""Handshakes per second and server CPU per connection of `forklift serve` over TLS (2 workers,
--reuse-port), with `openssl s_time` as the client: full handshakes (-new), then resumed ones
(-reuse), counting how many connections really resumed. docs/tls.md has the figures.

usage: s_time.py BINARY CERT KEY SECONDS [-tls1_3|-tls1_2]"""
import subprocess, sys, re, os, time, signal
binary, cert, key, secs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ver = sys.argv[5] if len(sys.argv) > 5 else "-tls1_3"
srv = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--workers", "2", "--reuse-port",
                        "--tls-cert", cert, "--tls-key", key], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       text=True, start_new_session=True)
port = None
pids = []
for line in srv.stdout:
    m = re.search(r"listening on https://127.0.0.1:(\d+)", line)
    if m: port = m.group(1)
    if line.startswith("ready pids="):
        pids = [int(p) for p in line.split("=")[1].split(",")]
        break
def cpu():
    t = 0
    for p in [srv.pid] + pids:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        t += int(f[11]) + int(f[12])
    return t / os.sysconf("SC_CLK_TCK")
try:
    for mode in ["-new", "-reuse"]:
        c0 = cpu()
        out = subprocess.run(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", mode, ver, "-www", "/", "-time", secs],
                             capture_output=True, text=True).stdout
        c1 = cpu()
        m = re.search(r"(\d+) connections in ([\d.]+)s; ([\d.]+) connections/user sec", out)
        n = int(m.group(1))
        body = out.split("Now timing with session id reuse.")[-1] if mode == "-reuse" else ""
        marks = "".join(re.findall(r"^[r*]+$", body, re.M))
        reused, new = marks.count("r"), marks.count("*")
        print(f"{os.path.basename(binary)} {ver} {mode}: {n} conns in {secs}s = {n/float(secs):.0f}/s; "
              f"server CPU {1e6*(c1-c0)/max(n,1):.0f} us/conn" +
              (f"; reused {reused}, new {new}" if mode == "-reuse" else ""))
finally:
    os.killpg(srv.pid, signal.SIGTERM)
    srv.wait()
