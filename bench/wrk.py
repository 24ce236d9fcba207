"""The wrk side of `bench.common.load`: Debian's wrk (C, epoll) with a Lua script that sends
pre-generated raw requests, each once. Cheaper per request than any Python client, which
matters on 2 cores where the client shares the machine with the server."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import LoadResult, Request
from bench.loadgen import encode

_WRK_SCRIPT = r"""
-- wrk's own clock is not visible to scripts; LuaJIT's ffi reads the wall clock, so that the
-- elapsed time runs from the first request to the last answer, not to the end of -d.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_usec; } bench_timeval;
int gettimeofday(bench_timeval *tv, void *tz);
]]
local tv = ffi.new("bench_timeval")
local function now_us()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec)
end
local requests, count, index = {}, 0, 0
statuses, first_us, last_us = {}, 0, 0
function init(args)
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  local position = 1
  while position <= #data do
    local newline = data:find("\n", position, true)
    local length = tonumber(data:sub(position, newline - 1))
    count = count + 1
    requests[count] = data:sub(newline + 1, newline + length)
    position = newline + length + 1
  end
end
function request()
  if first_us == 0 then first_us = now_us() end
  index = index + 1
  if index > count then
    -- Out of requests: this thread stops (wrk itself still waits for -d to pass).
    wrk.thread:stop()
    return requests[count]
  end
  return requests[index]
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  last_us = now_us()
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests_)
  local merged, first, last = {}, 0, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do merged[status] = (merged[status] or 0) + n end
    local f, l = thread:get("first_us"), thread:get("last_us")
    if f > 0 and (first == 0 or f < first) then first = f end
    if l > last then last = l end
  end
  local parts = {}
  for status, n in pairs(merged) do table.insert(parts, string.format('"%d": %d', status, n)) end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"statuses": {%s}, "first_us": %.0f, "last_us": %.0f, "p50": %d, "p90": %d, "p99": %d, ' ..
    '"p999": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d}\n',
    table.concat(parts, ", "), first, last, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), e.connect, e.read, e.write, e.timeout))
end
"""


def load_wrk(
    urls: Sequence[str], requests: Sequence[Request], *, concurrency: int, duration: float, timeout: float
) -> LoadResult:
    """One wrk process per URL (wrk drives one host), each with its share of connections and
    of the requests, as raw HTTP so that every request goes out exactly once."""
    with tempfile.TemporaryDirectory(prefix="porchlight-wrk-") as folder:
        script = Path(folder) / "requests.lua"
        script.write_text(_WRK_SCRIPT)
        procs = []
        for n, url in enumerate(urls):
            share = [r for i, r in enumerate(requests) if i % len(urls) == n]
            connections = max(1, concurrency // len(urls) + (1 if n < concurrency % len(urls) else 0))
            host = urlsplit(url).netloc
            data = Path(folder) / f"requests-{n}.bin"
            with data.open("wb") as handle:
                for r in share:
                    wire = encode(r.method, r.path, r.headers, r.body, host)
                    handle.write(f"{len(wire)}\n".encode() + wire)
            command = [
                "wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(duration))}s",
                "--timeout", f"{max(1, round(timeout))}s", "-s", str(script), url, "--", str(data),
            ]  # fmt: skip
            procs.append(
                subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            )
        outputs = [proc.communicate()[0] for proc in procs]
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    first, last = float("inf"), 0.0
    quantiles: dict[float, list[float]] = {50: [], 90: [], 99: [], 99.9: []}
    for output in outputs:
        match = re.search(r"^BENCH (.*)$", output, re.MULTILINE)
        if not match:
            raise RuntimeError(f"wrk gave no result:\n{output}")
        out = json.loads(match.group(1))
        statuses.update({int(k): v for k, v in out["statuses"].items()})
        errors.update({k: out[k] for k in ("connect", "read", "write", "timeout") if out[k]})
        if out["first_us"]:
            first, last = min(first, out["first_us"] / 1e6), max(last, out["last_us"] / 1e6)
        for q, key in ((50, "p50"), (90, "p90"), (99, "p99"), (99.9, "p999")):
            quantiles[q].append(out[key] / 1e6)
    # Only what completed counts as sent: requests still in flight when wrk stopped are not
    # known to have been sent, and each error is one failed row.
    sent = sum(statuses.values()) + sum(errors.values())
    if errors:
        statuses[0] += sum(errors.values())
    return LoadResult(
        sent=sent,
        statuses=statuses,
        errors=dict(errors),
        elapsed=max(0.0, last - first),
        latencies=[],
        # Several wrk processes: the worst of their percentiles (an upper bound, never flattering).
        quantiles={q: max(values) for q, values in quantiles.items()},
        client="wrk",
    )
