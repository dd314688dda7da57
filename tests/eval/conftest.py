"""The hand-made test split the evaluation tests share."""

import pytest

from argbench.data.corpus import load_corpus
from tests.factories import write_pairs, write_small_corpus


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """The small corpus's test split with two more debates: 5 pro pairs in t1/d1, 4 con pairs in a new theme."""
    root = tmp_path_factory.mktemp("corpus")
    write_small_corpus(root)
    write_pairs(root, "test", {("t1", "d1"): {"pro": 5}, ("t3", "d9"): {"con": 4}})
    return load_corpus(root).split("test")
