"""The access policy (content/policy.py) with a clock the test moves: P1 copies are
opens one after another, and last COPY_MEMORY; P2 listings with sizes are stats one
after another (or a copy); P3 a copy came from the folder before only when that one
was being copied as it arrived; P4 at most MAX_FOLDERS folders, least recently used
forgotten first."""
from __future__ import annotations

from recfs.content.policy import COPY_MEMORY, MAX_FOLDERS, AccessPolicy


class Clock:
    def __init__(self):
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def new_policy() -> tuple[AccessPolicy, Clock]:
    clock = Clock()
    return AccessPolicy(clock), clock


# -- P1

def test_opens_one_after_another_make_a_copy():
    p, _ = new_policy()
    assert p.opened("f", 0) is False                    # one open is no pattern yet
    assert not p.copying("f")
    assert p.opened("f", 1) is True
    assert p.copying("f")
    assert p.opened("f", 2) is True
    assert not p.copying("g")                           # per folder


def test_a_copy_counts_for_copy_memory_seconds_after_its_last_open_in_order():
    p, clock = new_policy()
    p.opened("f", 0)
    p.opened("f", 1)
    clock.now += COPY_MEMORY - 0.5
    assert p.copying("f")
    p.opened("f", 2)                                    # the copy goes on: counted from now
    clock.now += COPY_MEMORY - 0.5
    assert p.copying("f")
    clock.now += 0.5
    assert not p.copying("f")                           # an ls -l a little later is an ls -l again


def test_opens_in_another_order_never_make_a_copy():
    p, _ = new_policy()
    for index in (5, 2, 9, 3, 3, 0, 7, 6):              # a random pick, the same file twice, backwards
        assert p.opened("f", index) is False
        assert not p.copying("f")
    assert p.opened("f", None) is False                 # a file the folder does not list
    assert not p.copying("f")


def test_an_open_out_of_order_does_not_end_a_copy_under_way():
    p, clock = new_policy()
    p.opened("f", 0)
    p.opened("f", 1)
    assert p.opened("f", 7) is False                    # ffprobe of another file meanwhile
    assert p.copying("f")
    assert p.opened("f", 8) is True                     # and on from there
    clock.now += COPY_MEMORY
    assert not p.copying("f")


# -- P2

def test_stats_one_after_another_are_a_listing_with_sizes():
    p, _ = new_policy()
    assert p.statted("f", 0) is False
    assert p.statted("f", 1) is True
    assert p.statted("f", 2) is True
    assert p.statted("f", 9) is False                   # a jump: not (yet) a listing
    assert p.statted("f", 10) is True
    assert p.statted("f", None) is False
    assert p.statted("g", 4) is False                   # per folder


def test_stats_during_a_copy_are_a_listing_whatever_their_order():
    p, clock = new_policy()
    p.opened("f", 0)
    p.opened("f", 1)
    assert p.statted("f", 40) is True
    assert p.statted("f", 3) is True
    clock.now += COPY_MEMORY
    assert p.statted("f", 70) is False                  # the copy is over


def test_stats_do_not_make_a_copy():
    p, _ = new_policy()
    for i in range(10):
        p.statted("f", i)
    assert not p.copying("f")


# -- P3

def copy(p: AccessPolicy, folder, files: int, before=None) -> None:
    for i in range(files):
        p.opened(folder, i, lambda: before)


def test_a_copy_came_from_the_folder_before_when_that_one_was_being_copied():
    p, _ = new_policy()
    copy(p, "a", 5)
    assert not p.came_from_before("a")                  # nothing before a
    p.opened("b", 0, lambda: "a")
    assert not p.came_from_before("b")                  # not a copy of b until its next open
    p.opened("b", 1, lambda: "a")
    assert p.came_from_before("b")


def test_a_folder_before_that_was_not_being_copied_does_not_count():
    p, clock = new_policy()
    for i in (3, 1, 4):                                 # opened, but in no copy's order
        p.opened("a", i)
    copy(p, "b", 5, before="a")
    assert p.copying("b") and not p.came_from_before("b")
    copy(p, "c", 3, before="b")
    assert p.came_from_before("c")
    clock.now += COPY_MEMORY                            # the copy of c is over
    copy(p, "d", 3, before="c")
    assert p.copying("d") and not p.came_from_before("d")


def test_it_is_decided_when_the_copy_arrives_and_ends_with_the_copy():
    p, clock = new_policy()
    copy(p, "a", 5)
    copy(p, "b", 3, before="a")
    assert p.came_from_before("b")
    clock.now += COPY_MEMORY - 1
    p.opened("b", 3, lambda: "a")                       # a is no longer copied; b's copy goes on
    clock.now += COPY_MEMORY - 1
    assert p.came_from_before("b")                      # decided when the copy came into b
    clock.now += 1
    assert not p.came_from_before("b")                  # the copy of b is over too
    copy(p, "c", 3, before="b")
    assert not p.came_from_before("c")


def test_a_copy_that_starts_again_at_the_first_file_is_decided_again():
    p, _ = new_policy()
    copy(p, "b", 3, before="a")                         # a was never copied
    assert not p.came_from_before("b")
    copy(p, "a", 5)
    copy(p, "b", 3, before="a")                         # cp -r again, a then b
    assert p.came_from_before("b")


# -- P4

def test_memory_is_bounded_least_recently_used_forgotten_first():
    p, _ = new_policy()
    copy(p, "first", 2)
    copy(p, "kept", 2)
    for i in range(MAX_FOLDERS - 2):
        p.statted(i, 0)
    assert p.copying("first") and p.copying("kept")    # exactly MAX_FOLDERS so far
    p.opened("kept", 2)                                 # used again: now the most recent
    p.statted("one more", 0)
    assert len(p._folders) == MAX_FOLDERS
    assert not p.copying("first") and p.copying("kept")
    assert p.opened("first", 2) is False                # forgotten: its order starts over

