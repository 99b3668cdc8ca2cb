-- bench/fleet's wrk script: one line that the script parses, printed when wrk ends (after its
-- -d or a SIGINT). It defines no request or response function, so wrk keeps its fast path.
-- requests: responses read (any status); status: those not 2xx or 3xx; connect, read, write:
-- socket errors (a read error is a connection closed or reset before its response came);
-- timeout: wrk's count of requests older than --timeout at its two-second checks.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "fleet-wrk requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
