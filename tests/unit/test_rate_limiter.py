"""The per-source rate limiter (http.RateLimiter): what a 429 teaches it, with trio's
mock clock (no wall-clock time)."""
from __future__ import annotations

import trio
import trio.testing

from recfs.http import RateLimiter


async def _send(limiter: RateLimiter, n: int) -> None:
    for _ in range(n):
        await limiter.turn()


async def test_no_limit_until_the_service_asks() -> None:
    limiter = RateLimiter("svc")
    await _send(limiter, 100)
    limiter.answered(200, None)
    assert limiter.rate is None and limiter.waiting == 0


async def test_a_burst_refused_halves_the_rate_it_went_out_at(autojump_clock) -> None:
    """Five requests at once, then a 429: the burst is measured over its own span (at
    least BURST_SPAN), not over a whole second, so the rate is not cut to a crawl."""
    limiter = RateLimiter("svc")
    await _send(limiter, 5)
    limiter.answered(429, None)
    assert limiter.rate == 5 / RateLimiter.BURST_SPAN / 2


async def test_a_steady_rate_refused_is_halved(autojump_clock) -> None:
    limiter = RateLimiter("svc")
    for _ in range(40):                      # 20 a second for two seconds
        await limiter.turn()
        await trio.sleep(0.05)
    limiter.answered(429, None)
    assert 9 <= limiter.rate <= 11


async def test_clean_answers_grow_the_rate_and_429s_halve_it_once_a_second(autojump_clock) -> None:
    limiter = RateLimiter("svc")
    await _send(limiter, 1)
    limiter.answered(429, None)
    first = limiter.rate
    limiter.answered(429, None)              # the same moment: one decrease
    assert limiter.rate == first
    for _ in range(10):
        limiter.answered(200, None)
    assert limiter.rate > first
    await trio.sleep(1.0)
    grown = limiter.rate
    limiter.answered(429, None)
    assert limiter.rate == max(RateLimiter.MIN_RATE, grown / 2)


async def test_requests_wait_their_turn_at_the_learnt_rate(autojump_clock) -> None:
    limiter = RateLimiter("svc")
    await _send(limiter, 1)
    limiter.answered(429, None)
    limiter.rate = 10.0
    start = trio.current_time()
    await _send(limiter, 21)
    assert 1.9 <= trio.current_time() - start <= 2.2     # mock clock: 20 intervals of 0.1 s
