"""Shared fixtures: a tiny synthetic ReID world and a tiny fine-tuned-format checkpoint, made once per
test session; one intra-op thread for modules of tiny models."""
import pytest
import torch

from soliderkit.data.synth import generate_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A small Market-1501-style world (seconds to draw) shared by the tests that read images."""
    root = tmp_path_factory.mktemp("world")
    generate_world(root, identities=24, cameras=3, seed=7, unlabeled_identities=12,
                   min_images=4, max_images=6, distractors=6, junk=4)
    return root


@pytest.fixture(scope="session")
def tiny_reid_checkpoint(tmp_path_factory):
    """A random-weight pico ReID model (64x32 input, 16-d) saved as the toolkit's model.safetensors,
    preprocessing included."""
    from soliderkit.finetune.config import ModelConfig
    from soliderkit.finetune.model import build_reid_model, preprocessing_for, save_reid_model

    torch.manual_seed(0)
    cfg = ModelConfig(backbone="swin_pico_patch4_window7", input_height=64, input_width=32, reduce_feat_dim=True,
                      feat_dim=16, pretrained_model_path=None, drop_path=0.0)
    model = build_reid_model(cfg, num_classes=4).eval()
    path = tmp_path_factory.mktemp("tiny_reid") / "model.safetensors"
    save_reid_model(model, path, cfg, num_classes=4, preprocessing=preprocessing_for(cfg))
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one intra-op thread, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
