"""Shared fixtures: a tiny synthetic ReID world, generated once per test session."""
import pytest

from soliderkit.data.synth import generate_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A small Market-1501-style world (seconds to draw) shared by the tests that read images."""
    root = tmp_path_factory.mktemp("world")
    generate_world(root, identities=24, cameras=3, seed=7, unlabeled_identities=12,
                   min_images=4, max_images=6, distractors=6, junk=4)
    return root
