"""fusewait: the read lock hands over in order, the wait skips the scheduler only when
the fd is readable and at most MAX_UNYIELDED times in a row (F1-F3)."""
from __future__ import annotations

import os
import types

import pyfuse3
import trio
import trio.testing

from recfs import fusewait
from recfs.fusewait import MAX_UNYIELDED, FastWait, HandOffLock


async def test_lock_is_handed_to_waiters_in_order_and_never_left_free_while_one_waits():
    lock = HandOffLock()
    order = []

    async def user(name, hold):
        async with lock:
            order.append(name)
            assert lock.locked()
            await trio.sleep(hold)

    async with trio.open_nursery() as nursery:
        await lock.__aenter__()                  # held by the test
        for i in range(4):
            nursery.start_soon(user, i, 0.01)
            await trio.testing.wait_all_tasks_blocked()
        await lock.__aexit__(None, None, None)
        assert lock.locked()                     # F2: passed on, not freed
    assert order == [0, 1, 2, 3]
    assert not lock.locked()


async def test_free_lock_is_taken_without_a_checkpoint():
    lock = HandOffLock()
    with trio.testing.assert_no_checkpoints():
        async with lock:
            assert lock.locked()
    assert not lock.locked()


async def test_a_cancelled_waiter_leaves_the_lock_to_the_next():
    lock = HandOffLock()
    got = []

    async def user(name):
        async with lock:
            got.append(name)

    await lock.__aenter__()
    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancellable_user, lock, scope, got)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(user, "second")
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        await lock.__aexit__(None, None, None)
    assert got == ["second"]
    assert not lock.locked()


async def _cancellable_user(lock, scope, got):
    with scope:
        async with lock:
            got.append("first")


async def test_wait_returns_at_once_while_readable_but_checkpoints_every_few_waits():
    r, w = os.pipe()
    try:
        wait = FastWait()
        os.write(w, b"x")                        # a request is waiting
        with trio.testing.assert_no_checkpoints():
            for _ in range(MAX_UNYIELDED):
                await wait.wait_readable(r)
        assert wait.immediate == MAX_UNYIELDED and wait.slept == 0
        with trio.testing.assert_checkpoints():  # F3: this one goes through trio
            await wait.wait_readable(r)
        assert wait.slept == 1
        with trio.testing.assert_no_checkpoints():
            await wait.wait_readable(r)
        assert wait.immediate == MAX_UNYIELDED + 1
    finally:
        os.close(r)
        os.close(w)


async def test_wait_sleeps_until_the_fd_is_readable():
    r, w = os.pipe()
    try:
        wait = FastWait()
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def waiter():
                await wait.wait_readable(r)
                done.set()
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set() and wait.slept == 1
            os.write(w, b"x")
        assert done.is_set() and wait.immediate == 0
    finally:
        os.close(r)
        os.close(w)


def test_install_swaps_only_lock_and_wait_and_uninstall_restores():
    try:
        wait = fusewait.install(pyfuse3)
        assert isinstance(wait, FastWait)
        shim = pyfuse3.trio
        assert shim.Lock is HandOffLock
        assert shim.lowlevel.wait_readable == wait.wait_readable
        # everything else pyfuse3 uses still is trio's own
        assert shim.open_nursery is trio.open_nursery
        assert shim.ClosedResourceError is trio.ClosedResourceError
        assert shim.lowlevel.current_trio_token is trio.lowlevel.current_trio_token
        assert shim.lowlevel.notify_closing is trio.lowlevel.notify_closing
        assert shim.lowlevel.current_task is trio.lowlevel.current_task
        assert fusewait.install(pyfuse3) is None     # not twice
    finally:
        fusewait.uninstall(pyfuse3)
    assert pyfuse3.trio is trio


def test_install_leaves_an_unknown_pyfuse3_alone():
    other = types.SimpleNamespace(trio=object())
    assert fusewait.install(other) is None
    fake = types.SimpleNamespace(trio=trio)          # no _wait_fuse_readable: not the loop we know
    assert fusewait.install(fake) is None and fake.trio is trio
