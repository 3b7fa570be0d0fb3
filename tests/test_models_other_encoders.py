"""DINOv2 and SigLIP go through the same role map: PEFT, prefix and VPT work there too."""

import pytest
import torch

from emoset_peft.models import build_model, input_spec, load_adapter
from emoset_peft.models.tiny import save_tiny_backbone


@pytest.fixture(scope="module", params=["dinov2", "siglip"])
def encoder_dir(request, tmp_path_factory):
    return save_tiny_backbone(request.param, tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("method", ["lora", "ia3", "prefix", "vpt"])
def test_train_save_load(method, encoder_dir, tmp_path):
    torch.manual_seed(0)
    model = build_model(encoder_dir, method)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(pixel_values=x, labels=torch.tensor([0, 5])).loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    assert expected.shape == (2, 8)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(load_adapter(tmp_path)(pixel_values=x).logits, expected)


def test_fallback_input_spec_without_a_preprocessor(encoder_dir):
    spec = input_spec(encoder_dir)
    assert spec.image_size == 32
    # DINOv2 normalises with ImageNet statistics, SigLIP with 0.5.
    assert spec.mean[0] == (0.485 if "dinov2" in str(encoder_dir) else 0.5)
