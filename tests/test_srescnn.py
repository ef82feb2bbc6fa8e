"SResCNN: shapes, 256 deep features, variants, Grad-CAM layer, hooks, determinism, trainability."
import pytest
import torch

from pdl1_dls.petct.srescnn import CHANNELS, SResCNN, make_model


@pytest.mark.parametrize("channels,c", [("hyper", 3), ("pet", 1), ("ct", 1)])
def test_shapes_and_features(channels, c):
    torch.manual_seed(0)
    m = make_model(channels).eval()
    x = torch.randn(4, c, 64, 64)
    with torch.no_grad():
        assert m(x).shape == (4,)
        assert m.features(x).shape == (4, 256)
        assert m.feature_maps(x).shape == (4, 256, 4, 4)
    assert m.in_channels == len(CHANNELS[channels]) and m.n_features == 256


def test_wrong_channels_rejected():
    with pytest.raises(ValueError, match="channels"):
        make_model("mri")
    with pytest.raises(RuntimeError):
        make_model("pet")(torch.randn(2, 3, 64, 64))


def test_forward_is_head_of_features():
    torch.manual_seed(1)
    m = make_model().eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m(x), m.head(m.features(x)).squeeze(1), atol=1e-6)
        # features are the spatial mean of the last block's maps (global average pooling)
        assert torch.allclose(m.features(x), m.feature_maps(x).mean((2, 3)), atol=1e-6)


def test_gradcam_layer_and_hooks():
    m = make_model().eval()
    assert m.gradcam_layer is m.layer4
    assert dict(m.named_modules())["layer4"] is m.layer4
    seen = {}
    hs = [getattr(m, n).register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, tuple(o.shape)))
          for n in ("stem", "layer1", "layer2", "layer3", "layer4")]
    with torch.no_grad():
        m(torch.randn(2, 3, 64, 64))
    for h in hs: h.remove()
    assert seen == {"stem": (2, 32, 32, 32), "layer1": (2, 32, 16, 16), "layer2": (2, 64, 8, 8),
                    "layer3": (2, 128, 4, 4), "layer4": (2, 256, 4, 4)}
    # gradients reach the Grad-CAM layer's activations
    acts = {}
    def keep(mod, i, o):
        o.retain_grad(); acts["a"] = o
    h = m.gradcam_layer.register_forward_hook(keep)
    m(torch.randn(2, 3, 64, 64)).sum().backward(); h.remove()
    assert acts["a"].grad is not None and acts["a"].grad.abs().sum() > 0


def test_init_deterministic_for_seed():
    torch.manual_seed(7); a = SResCNN().state_dict()
    torch.manual_seed(7); b = SResCNN().state_dict()
    torch.manual_seed(8); c = SResCNN().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layer4.conv1.weight"], c["layer4.conv1.weight"])


def test_learns_a_separable_pattern():
    "A few Adam steps fit a bright-centre vs. dark-centre toy problem: the model can learn."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 64, 64, generator=g) * 0.5
    y = (torch.arange(64) % 2).float()
    x[y == 1, :, 24:40, 24:40] += 1.0
    torch.manual_seed(0)
    m = make_model(dropout=0.0)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    for _ in range(15):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x), y)
        loss.backward(); opt.step()
    m.eval()
    with torch.no_grad(): p = torch.sigmoid(m(x))
    assert (p[y == 1].min() > p[y == 0].max()) or ((p > 0.5).float() == y).float().mean() > 0.9
