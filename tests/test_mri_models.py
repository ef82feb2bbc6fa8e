"MRI models: local-only ImageNet weights, per-sequence net, focal loss, PCA reducer, fusion, Grad-CAM (explain.gradcam)."
import warnings

import numpy as np
import pytest
import torch
import torchvision

from pdl1_dls.core import PDL1Error
from pdl1_dls.mri.models import FeatureReducer, FusionTransformer, SequenceNet, extract_features, focal_loss, resnet_backbone


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    def boom(*a, **k): raise AssertionError("attempted a download")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)
    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)


def test_random_init_warns():
    with pytest.warns(UserWarning, match="random weights"):
        net = resnet_backbone("resnet18")
    assert isinstance(net.fc, torch.nn.Identity) and net.n_features == 512
    with pytest.raises(ValueError, match="backbone must be one of"):
        resnet_backbone("vgg16")


def test_local_weights_loaded(tmp_path):
    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no random-init warning when a file is given
        net = SequenceNet("resnet18", weights=tmp_path / "r18.pth")
    assert torch.equal(net.body.conv1.weight, ref.conv1.weight)
    assert torch.equal(net.body.layer4[-1].bn2.running_var, ref.layer4[-1].bn2.running_var)
    # a checkpoint wrapped as {"state_dict": ...} with DataParallel prefixes also loads
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, tmp_path / "wrapped.pth")
    net2 = SequenceNet("resnet18", weights=tmp_path / "wrapped.pth")
    assert torch.equal(net2.body.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)


def test_bad_weights(tmp_path):
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(PDL1Error, match=r"file=.*r34.pth: weights do not fit resnet18"):
        resnet_backbone("resnet18", tmp_path / "r34.pth")
    with pytest.raises(PDL1Error, match="weights file does not exist"):
        resnet_backbone("resnet18", tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PDL1Error, match=r"junk.pth: cannot load weights"):
        resnet_backbone("resnet18", tmp_path / "junk.pth")


def test_sequence_net_and_features():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); net = SequenceNet("resnet18").eval()
    x = torch.randn(5, 3, 40, 40)
    f, l = extract_features(net, x, batch_size=2)
    with torch.no_grad():
        assert np.allclose(f, net.body(x).numpy(), atol=1e-5)
        assert np.allclose(l, net(x).numpy(), atol=1e-5)
    assert net.target_layer is net.body.layer4[-1]


def test_focal_loss_formula():
    torch.manual_seed(0)
    z, y = torch.randn(50), (torch.rand(50) > 0.5).float()
    p = torch.sigmoid(z); pt = torch.where(y == 1, p, 1 - p); a = torch.where(y == 1, 0.5, 0.5)
    want = (-a * (1 - pt) ** 2 * torch.log(pt)).mean()
    assert torch.allclose(focal_loss(z, y, 0.5, 2.0), want, atol=1e-6)
    # gamma = 0 and alpha < 0: plain BCE
    assert torch.allclose(focal_loss(z, y, -1, 0.0), torch.nn.functional.binary_cross_entropy_with_logits(z, y), atol=1e-6)


def test_reducer_fitted_on_training_only():
    rng = np.random.default_rng(0)
    tr = [rng.normal(size=(30, 64)) for _ in range(3)]
    red = FeatureReducer(128).fit(tr)
    assert red.k_ == 29  # n_train - 1 < 128
    before = {k: v.copy() for k, v in red.state().items()}
    va1 = [rng.normal(size=(9, 64)) for _ in range(3)]
    out1 = red.transform(va1)
    red.transform([v * 100 for v in va1])  # transforming other data changes nothing fitted
    after = red.state()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # against sklearn directly: standardise -> PCA -> one scale (the first component's training SD)
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler
    s1 = StandardScaler().fit(tr[1]); p = PCA(29, svd_solver="full").fit(s1.transform(tr[1]))
    z_tr = p.transform(s1.transform(tr[1]))
    ref = (p.transform(s1.transform(va1[1])) - z_tr.mean(0)) / z_tr[:, 0].std()
    assert np.allclose(np.abs(out1[:, 1]), np.abs(ref), atol=1e-4)
    # component_scale="unit": each component standardised separately (sklearn StandardScaler)
    unit = FeatureReducer(128, component_scale="unit").fit(tr).transform(va1)
    assert np.allclose(np.abs(unit[:, 1]), np.abs(StandardScaler().fit(z_tr).transform(p.transform(s1.transform(va1[1])))), atol=1e-4)
    assert np.allclose(FeatureReducer.from_state(red.state()).transform(va1), out1, atol=1e-6)
    assert red.transform(tr).shape == (30, 3, 29)
    big = [rng.normal(size=(300, 512)) for _ in range(3)]
    assert FeatureReducer(128).fit(big).k_ == 128


def test_fusion_architecture_and_learning():
    fus = FusionTransformer(d_in=16)
    assert len(fus.encoder.layers) == 3 and fus.encoder.layers[0].self_attn.num_heads == 8
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    tok = rng.normal(size=(200, 3, 16)).astype(np.float32); tok[:, :, 0] += 1.5 * y[:, None]  # signal in every token
    opt = torch.optim.Adam(fus.parameters(), 1e-2)
    for _ in range(60):
        fus.train(); loss = focal_loss((lambda o: o[:, 1] - o[:, 0])(fus(torch.as_tensor(tok))), torch.as_tensor(y), 0.5, 2.0)
        opt.zero_grad(); loss.backward(); opt.step()
    d = fus.dls(tok)
    from pdl1_dls.stats.roc import auc
    assert ((0 < d) & (d < 1)).all() and auc(y, d) > 0.85
    # tokens are not interchangeable: each sequence has its own projection and embedding
    assert not np.allclose(fus.dls(tok[:, ::-1].copy()), d)
    assert len(fus.proj) == 3 and all(p.weight.shape == (64, 16) for p in fus.proj)


def test_fusion_uses_a_sequence_whose_sign_differs():
    "Per-sequence projections: a token whose signal has the opposite sign to the others' still adds to the DLS."
    from pdl1_dls.stats.roc import auc
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    tok = rng.normal(size=(300, 3, 8)).astype(np.float32)
    tok[:, 0, 0] += 1.0 * y; tok[:, 1, 0] -= 1.0 * y; tok[:, 2, 0] += 1.0 * y    # the T2 token points the other way
    torch.manual_seed(0); fus = FusionTransformer(d_in=8, dropout=0.0)
    opt = torch.optim.Adam(fus.parameters(), 1e-2)
    for _ in range(150):
        fus.train(); loss = focal_loss((lambda o: o[:, 1] - o[:, 0])(fus(torch.as_tensor(tok))), torch.as_tensor(y), 0.5, 2.0)
        opt.zero_grad(); loss.backward(); opt.step()
    single = max(auc(y, s * tok[:, i, 0]) for i, s in ((0, 1), (1, -1), (2, 1)))
    assert auc(y, fus.dls(tok)) > single + 0.03


def test_gradcam_shapes_and_range():
    "A SequenceNet's Grad-CAM is explain.gradcam on its target layer (no second implementation)."
    from pdl1_dls.explain import cam_layer, gradcam
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); net = SequenceNet("resnet18").eval()
    x = torch.zeros(2, 3, 64, 64); x[:, :, :24, :24] = 3.0
    cams1 = gradcam(net, x, target=1)
    cams0 = gradcam(net, x[0], target=0)
    assert cam_layer(net) is net.target_layer
    assert cams1.shape == (2, 64, 64) and cams0.shape == (1, 64, 64)
    assert np.isfinite(cams1).all() and cams1.min() >= 0 and cams1.max() <= 1


def test_gradcam_equals_the_dropped_mri_gradcam():
    "explain.gradcam gives the maps mri_gradcam gave (pytorch-grad-cam, BinaryClassifierOutputTarget), to 1e-6, both targets."
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
    from pdl1_dls.explain import gradcam
    net = _trained_like_net(3)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for t in (1, 0):
        with GradCAM(model=net, target_layers=[net.target_layer]) as cam:
            ref = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(t)] * len(x))
        got = gradcam(net, x, t)
        assert ref.shape == got.shape == (3, 64, 64) and ref.std() > 0
        assert np.allclose(got, ref, atol=1e-6, rtol=0)


def _trained_like_net(seed=0):
    "resnet18 SequenceNet with non-trivial BatchNorm statistics (as after training), in eval mode."
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); net = SequenceNet("resnet18")
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2); m.running_var.uniform_(0.3, 2.0); m.weight.uniform_(0.5, 1.5); m.bias.normal_(0, 0.1)
    return net.eval()


def _close(a, b, rel=1e-5):
    "Equal to float tolerance: max |a - b| at most `rel` of the largest |b|."
    return np.abs(np.asarray(a) - np.asarray(b)).max() <= rel * np.abs(np.asarray(b)).max()


@pytest.mark.parametrize("size", [40, 128])  # 40 px: the plain NCHW path; 128 px: BatchNorm folded, channels-last (from 80 px)
def test_extract_features_batched_equals_per_image(size):
    "The batched path gives the per-image features (one plain NCHW forward per image) at every batch size."
    from pdl1_dls.mri.models import _cpu_plan
    net = _trained_like_net()
    x = torch.randn(7, 3, size, size, generator=torch.Generator().manual_seed(1))
    assert _cpu_plan(size, size, 64)[1] is (size >= 80)
    with torch.no_grad():
        ref = torch.cat([net.features(x[i:i + 1]) for i in range(len(x))]).numpy()
        ref_logit = torch.cat([net(x[i:i + 1]) for i in range(len(x))]).numpy()
    outs = {bs: extract_features(net, x, batch_size=bs) for bs in (1, 3, 7, 64)}
    for bs, (f, l) in outs.items():
        assert f.shape == (7, 512) and l.shape == (7,) and f.dtype == l.dtype == np.float32
        assert _close(f, ref) and _close(l, ref_logit), bs
        assert _close(f, outs[1][0]) and _close(l, outs[1][1]), bs  # the result does not depend on the batch size
    # numpy float64 input (the trainer's arrays) and a list of images: the same features
    assert _close(extract_features(net, x.numpy().astype(np.float64), batch_size=3)[0], ref)
    assert _close(extract_features(net, list(x.numpy()), batch_size=4)[0], ref)


def test_extract_features_small_inputs_as_before():
    "Below 80 px with the default batch: exactly the plain NCHW forward of the whole batch (the trainer's 48 px profiles)."
    net = _trained_like_net()
    x = torch.randn(20, 3, 48, 48)
    with torch.no_grad(): ref, ref_logit = net.features(x).numpy(), net(x).numpy()
    f, l = extract_features(net, x)
    assert np.array_equal(f, ref) and np.array_equal(l, ref_logit)


def test_extract_features_leaves_the_model_alone():
    "BatchNorm is folded into a copy: parameters, buffers, modules and later forwards of the model are unchanged."
    net = _trained_like_net()
    before = {k: (v.clone(), v.data_ptr()) for k, v in net.state_dict().items()}
    x = torch.randn(3, 3, 128, 128)
    with torch.no_grad(): y0 = net(x)
    net.train()
    extract_features(net, x, batch_size=2)
    assert not net.training  # eval mode, as documented
    assert isinstance(net.body.bn1, torch.nn.BatchNorm2d) and isinstance(net.body.layer2[0].downsample[1], torch.nn.BatchNorm2d)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k][0]) and v.data_ptr() == before[k][1] and v.is_contiguous(), k
    with torch.no_grad(): assert torch.equal(net(x), y0)  # bitwise: the next forward (training, Grad-CAM) is as before


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])  # basic and bottleneck blocks
def test_folded_body(backbone):
    from pdl1_dls.mri.models import _folded_body
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); net = SequenceNet(backbone).eval()
    body = net.body
    fb = _folded_body(body)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fb.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules()) > 0
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad(): assert _close(fb(x.contiguous(memory_format=torch.channels_last)), body(x))
    # a model with hooks keeps its modules: no folded copy, and extract_features runs (and hooks) the real ones
    seen = []
    h = body.layer4.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    assert _folded_body(body) is None
    f, _ = extract_features(net, x, batch_size=1)
    with torch.no_grad(): assert _close(f, body(x).numpy())
    assert seen[:2] == [1, 1]
    h.remove()


def test_extract_features_cpu_plan_and_edges():
    from pdl1_dls.mri.models import _cpu_plan
    net = _trained_like_net()
    assert _cpu_plan(224, 224, 64) == (32, True)     # at most 32 images of 224 px per CPU forward
    assert _cpu_plan(224, 224, 4) == (4, True)       # batch_size is an upper bound
    assert _cpu_plan(48, 48, 64) == (64, False)      # small inputs: the whole batch, NCHW
    assert _cpu_plan(2048, 2048, 64) == (1, True)    # never below one image
    f, l = extract_features(net, np.zeros((0, 3, 32, 32), np.float32))
    assert f.shape == (0, 512) and l.shape == (0,)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(net, torch.zeros(2, 3, 32, 32), batch_size=0)
