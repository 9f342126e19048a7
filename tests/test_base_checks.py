"""The shared config checks of zoo.base: good values pass, and each kind of bad value is
refused with a ConfigError that names the key."""

from dataclasses import dataclass, field

import pytest

from zoo.base import (
    ConfigError,
    require_non_negative_ints,
    require_non_negative_numbers,
    require_positive_ints,
    require_positive_numbers,
    require_positive_sizes,
)

NAN, INF = float("nan"), float("inf")


@dataclass
class Cfg:
    a: object = 1
    b: object = 2
    hidden: object = field(default=(8, 4))


def test_positive_ints_pass_whole_numbers_from_one():
    require_positive_ints(Cfg(a=1, b=10**12), "a", "b")
    require_positive_ints(Cfg())  # no keys: nothing to check


@pytest.mark.parametrize("bad", [True, False, 0, -3, 2.0, 1.5, NAN, INF, None, "3"])
def test_positive_ints_refuse_the_rest_naming_the_key(bad):
    with pytest.raises(ConfigError, match=rf"^b must be a positive integer, got {bad!r}$"):
        require_positive_ints(Cfg(b=bad), "a", "b")


def test_non_negative_ints_pass_zero():
    require_non_negative_ints(Cfg(a=0, b=7), "a", "b")


@pytest.mark.parametrize("bad", [True, False, -1, 0.0, 2.0, NAN, None])
def test_non_negative_ints_refuse_the_rest_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"^a must be an integer >= 0, got "):
        require_non_negative_ints(Cfg(a=bad), "a", "b")


def test_positive_numbers_pass_ints_and_floats():
    require_positive_numbers(Cfg(a=1e-12, b=3), "a", "b")
    require_positive_numbers(Cfg(a=10**400), "a")  # a huge int is still finite


@pytest.mark.parametrize("bad", [True, 0, 0.0, -0.5, NAN, INF, -INF, None, "0.5"])
def test_positive_numbers_refuse_the_rest_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"^b must be a positive number, got "):
        require_positive_numbers(Cfg(b=bad), "a", "b")


def test_non_negative_numbers_pass_zero():
    require_non_negative_numbers(Cfg(a=0, b=0.0), "a", "b")
    require_non_negative_numbers(Cfg(a=2.5), "a")


@pytest.mark.parametrize("bad", [False, -1, -1e-9, NAN, INF, None])
def test_non_negative_numbers_refuse_the_rest_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"^a must be a finite number >= 0, got "):
        require_non_negative_numbers(Cfg(a=bad), "a")


def test_positive_sizes_pass_tuples_and_lists_of_positive_ints():
    require_positive_sizes(Cfg(hidden=(64, 1)), "hidden")
    require_positive_sizes(Cfg(hidden=[3]), "hidden")
    require_positive_sizes(Cfg(hidden=()), "hidden", allow_empty=True)


@pytest.mark.parametrize("bad", [(8, 0), (8, -1), (True,), (2.0,), (NAN,), 8, "64", None])
def test_positive_sizes_refuse_bad_sizes_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"^hidden sizes must be positive integers, got "):
        require_positive_sizes(Cfg(hidden=bad), "hidden")


def test_positive_sizes_refuse_empty_unless_allowed():
    with pytest.raises(ConfigError, match=r"^hidden must hold at least one size, got \(\)$"):
        require_positive_sizes(Cfg(hidden=()), "hidden")


def test_every_key_is_checked_not_only_the_first():
    with pytest.raises(ConfigError, match="^b sizes"):
        require_positive_sizes(Cfg(a=(1,), b=(0,)), "a", "b")
