"""S3: the page's own script backs off exponentially with full jitter, in Chromium.

test_ws_reconnect_storm.py drives 2,000 clients with a port of static/js/tracking.js `retry()`;
this checks the original. A real tracking page is opened with a window.WebSocket that always
fails and a setTimeout that records the delay the script asks for before each new `connect`
and then runs it at once (a fast clock), LOADS times, ATTEMPTS attempts a load. Attempt k must
wait a delay drawn uniformly from [0, min(CAP, BASE * 2^k)): each delay under its bound, the
bound doubling up to the cap (the largest delays of attempt k pass the bound of attempt k-1),
and the delays divided by their bounds uniform on [0, 1) (Kolmogorov-Smirnov), not all at the
bound, which is what a client without jitter would ask for.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.scale.support import page_backoff, seed_live
from tests.services import daphne
from tests.tracking.test_consumer import SESSION_PREFIX
from tests.tracking.test_e2e_page import block_tiles

pytestmark = [
    pytest.mark.browser,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]

LOADS, ATTEMPTS = 25, 40
# Kolmogorov-Smirnov critical value at alpha = 0.001 is 1.95 / sqrt(n).
KS_ALPHA_001 = 1.95

FAILING_SOCKET = """
(() => {
  const limit = %d;
  const realSetTimeout = window.setTimeout.bind(window);
  window.__delays = [];
  window.WebSocket = function () { throw new Error("the server is down"); };
  window.setTimeout = function (callback, delay, ...rest) {
    if (typeof callback === "function" && callback.name === "connect") {
      window.__delays.push(delay);
      if (window.__delays.length >= limit) { return 0; }
      return realSetTimeout(callback, 0, ...rest);
    }
    return realSetTimeout(callback, delay, ...rest);
  };
})();
"""


def ks_uniform(values: list[float]) -> float:
    """The Kolmogorov-Smirnov distance between `values` and the uniform distribution on [0, 1)."""
    ordered = sorted(values)
    n = len(ordered)
    return max(max((i + 1) / n - u, u - i / n) for i, u in enumerate(ordered))


def test_the_page_waits_exponentially_longer_with_full_jitter_between_reconnect_attempts(page: Any) -> None:
    base, cap = page_backoff()
    bounds = [min(cap, base * 2**k) * 1000 for k in range(ATTEMPTS)]
    with daphne(CHANNEL_LAYER_PREFIX=SESSION_PREFIX) as url:
        (token,) = seed_live(url, "ORD-S3J", 1, driver="drv_s3j")
        block_tiles(page)
        page.add_init_script(FAILING_SOCKET % ATTEMPTS)
        loads: list[list[float]] = []
        for _ in range(LOADS):
            page.goto(f"{url}/t/{token}/")
            page.wait_for_function("(n) => window.__delays.length >= n", arg=ATTEMPTS, timeout=10_000)
            loads.append(page.evaluate("window.__delays"))

    assert page.get_attribute("#tracking", "data-socket") in (None, "closed")
    for delays in loads:
        assert len(delays) == ATTEMPTS
        assert all(0 <= delay < bound for delay, bound in zip(delays, bounds, strict=True)), delays
    # The bound doubles: the longest waits of attempt k are longer than attempt k-1 could wait.
    doubling = [k for k in range(1, ATTEMPTS) if bounds[k] > bounds[k - 1]]
    assert len(doubling) == math.ceil(math.log2(cap / base))
    for k in doubling:
        assert max(delays[k] for delays in loads) > bounds[k - 1], (
            f"attempt {k} never waited past {bounds[k - 1]} ms"
        )
    # Uniform from 0 under each bound (full jitter), not bunched at the bound (no jitter).
    fractions = [delay / bound for delays in loads for delay, bound in zip(delays, bounds, strict=True)]
    critical = KS_ALPHA_001 / math.sqrt(len(fractions))
    assert ks_uniform(fractions) < critical
    assert ks_uniform([1.0] * len(fractions)) >= critical  # the check tells no jitter apart
    early = [delays[k] / bounds[k] for delays in loads for k in range(len(doubling) + 1)]
    assert ks_uniform(early) < KS_ALPHA_001 / math.sqrt(len(early))  # and while the bound grows
    print(
        f"\nS3 page backoff: {len(fractions)} delays from {LOADS} loads; bounds (ms)"
        f" {[round(b) for b in bounds[: len(doubling) + 2]]}...; KS distance to uniform"
        f" {ks_uniform(fractions):.3f} (critical {critical:.3f}); mean fraction of the bound"
        f" {sum(fractions) / len(fractions):.2f}"
    )
