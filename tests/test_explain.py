"Tests of pdl1_dls.explain: Grad-CAM (shape, range, sign convention, localisation, determinism), activations, clustering + χ²."
import warnings

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from sklearn.metrics import adjusted_rand_score

from pdl1_dls.core import PDL1Error, seed_everything
from pdl1_dls.explain import (BinaryLogitTarget, activation_maps, cam_layer, cluster_deep_features,
                              gradcam, plot_activations, plot_feature_heatmap, plot_hyperimage_gradcam,
                              plot_mri_gradcam, top_filters)
from pdl1_dls.petct.srescnn import SResCNN, make_model
from pdl1_dls.stats.association import chi_square


@pytest.fixture(scope="module")
def net():
    seed_everything(0)
    return make_model("hyper").eval()


@pytest.fixture(scope="module")
def seqnet():
    from pdl1_dls.mri.models import SequenceNet
    seed_everything(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SequenceNet("resnet18").eval()


class TwoChannel(nn.Module):
    "Controlled model: layer = identity 1×1 conv on (PET, CT); logit = mean(PET) − mean(CT) (GAP + fixed head)."
    def __init__(self, pool: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad(): self.conv.weight.copy_(torch.eye(2)[:, :, None, None])
        self.down = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.head = nn.Linear(2, 1, bias=False)
        with torch.no_grad(): self.head.weight.copy_(torch.tensor([[1.0, -1.0]]))

    def forward(self, x):
        return self.head(self.down(self.conv(x)).mean((2, 3)))[:, 0]


def _blobs(n, size=32, side=6, seed=0):
    "Images with a PET blob at box A (channel 0) and a CT blob at a disjoint box B (channel 1)."
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 2, size, size), np.float32)
    boxes = []
    for i in range(n):
        while True:
            a, b = rng.integers(0, size - side, 2), rng.integers(0, size - side, 2)
            if np.abs(a - b).max() > side + 2: break
        x[i, 0, a[0]:a[0] + side, a[1]:a[1] + side] = 1
        x[i, 1, b[0]:b[0] + side, b[1]:b[1] + side] = 1
        boxes.append((a, b))
    return x, boxes


def _inside(idx, box, side, pad=0):
    return all(box[k] - pad <= idx[k] < box[k] + side + pad for k in (0, 1))


# ---------------------------------------------------------------- Grad-CAM
@pytest.mark.parametrize("channels", ["hyper", "pet"])
def test_gradcam_shape_range_srescnn(channels):
    seed_everything(1)
    m = make_model(channels)
    x = torch.rand(5, m.in_channels, 64, 64)
    for t in (1, 0):
        c = gradcam(m, x, t)
        assert c.shape == (5, 64, 64) and c.dtype == np.float32
        assert np.isfinite(c).all() and c.min() >= 0 and c.max() <= 1
        nz = c.reshape(5, -1).max(1) > 0
        assert (c.reshape(5, -1).max(1)[nz] > 0.99).all()   # each non-empty map is scaled to peak ~1
    assert gradcam(m, x[0], 1).shape == (1, 64, 64)                     # one (c, h, w) image is promoted
    assert gradcam(m, x, 1, upsample=False).shape == (5, 4, 4)           # layer4 resolution


def test_gradcam_matches_hand_computed_reference(net):
    "Raw maps equal ReLU(±Σ_c mean(∂z/∂A_c)·A_c) computed by autograd, for both filters."
    x = torch.rand(3, 3, 64, 64)
    A = {}
    h = net.layer4.register_forward_hook(lambda m, i, o: A.setdefault("a", o))
    xr = x.clone()
    z = net(xr)
    h.remove()
    g, = torch.autograd.grad(z.sum(), A["a"])
    signed = (g.mean((2, 3))[:, :, None, None] * A["a"]).sum(1).detach().numpy()
    pos = gradcam(net, x, 1, scale=None, upsample=False)
    neg = gradcam(net, x, 0, scale=None, upsample=False)
    assert np.allclose(pos, np.maximum(signed, 0), atol=1e-5 * np.abs(signed).max())
    assert np.allclose(neg, np.maximum(-signed, 0), atol=1e-5 * np.abs(signed).max())
    assert (np.minimum(pos, neg) == 0).all()            # positive and negative filters never overlap
    assert (pos > 0).any() and (neg > 0).any()           # and both are non-trivial for a random net
    from pytorch_grad_cam.utils.image import scale_cam_image
    # "image" scale = the library's per-image min-max of the raw map
    assert np.allclose(gradcam(net, x, 1, upsample=False), scale_cam_image(pos), atol=1e-6)


def library_gradcam(model, x, target):
    "pytorch-grad-cam's GradCAM with its own BinaryClassifierOutputTarget on the model's target layer (what mri_gradcam was)."
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
    with GradCAM(model=model.eval(), target_layers=[model.target_layer]) as cam:
        return cam(input_tensor=torch.as_tensor(x), targets=[BinaryClassifierOutputTarget(int(target))] * len(x))


def test_target_wrapper_matches_library_binary_target(seqnet):
    "Our target gives the same maps as pytorch-grad-cam's BinaryClassifierOutputTarget, to 1e-6 (MRI maps did not change)."
    x = torch.randn(2, 3, 64, 64)
    for t in (1, 0):
        assert np.allclose(gradcam(seqnet, x, t), library_gradcam(seqnet, x, t), atol=1e-6, rtol=0)
    assert cam_layer(seqnet) is seqnet.body.layer4[-1]
    assert gradcam(seqnet, x, 1).shape == (2, 64, 64)


def test_binary_target_sign_and_errors():
    out = torch.tensor(2.5)
    assert BinaryLogitTarget(1)(out).item() == 2.5 and BinaryLogitTarget(0)(out).item() == -2.5
    assert BinaryLogitTarget(0)(torch.tensor([1.5])).item() == -1.5
    with pytest.raises(ValueError, match="one-logit"): BinaryLogitTarget(1)(torch.zeros(2))
    with pytest.raises(ValueError, match="target"): BinaryLogitTarget(2)


@pytest.mark.parametrize("pool", [1, 4])
def test_gradcam_localises_controlled_model(pool):
    "Logit = mean(PET) − mean(CT): the positive filter peaks on the PET blob, the negative on the CT blob."
    m = TwoChannel(pool)
    side = 8
    x, boxes = _blobs(8, size=32, side=side)
    pos, neg = gradcam(m, x, 1, layer=m.conv if pool == 1 else m.down), gradcam(m, x, 0, layer="conv" if pool == 1 else "down")
    pad = 0 if pool == 1 else pool
    for p, n, (a, b) in zip(pos, neg, boxes):
        assert _inside(np.unravel_index(p.argmax(), p.shape), a, side, pad)
        assert _inside(np.unravel_index(n.argmax(), n.shape), b, side, pad)
        if pool == 1:   # at full resolution the maps are exactly the blobs
            ina = np.zeros_like(p, bool); ina[a[0]:a[0] + side, a[1]:a[1] + side] = True
            inb = np.zeros_like(p, bool); inb[b[0]:b[0] + side, b[1]:b[1] + side] = True
            assert np.allclose(p[ina], 1, atol=1e-5) and np.allclose(p[~ina], 0)
            assert np.allclose(n[inb], 1, atol=1e-5) and np.allclose(n[~inb], 0)


def test_gradcam_localises_trained_srescnn():
    "An SResCNN trained (CPU, seconds) to detect a bright square: the positive filter peaks on the square."
    rng = seed_everything(1)

    def toy(n):
        x = rng.normal(0, 0.1, (n, 1, 64, 64)).astype(np.float32)
        y = np.arange(n) % 2
        boxes = []
        for i in range(n):
            r, c = rng.integers(0, 48, 2); boxes.append((r, c))
            if y[i]: x[i, 0, r:r + 16, c:c + 16] += 1.0
        return torch.tensor(x), torch.tensor(y, dtype=torch.float32), boxes

    m = SResCNN(in_channels=1, widths=(8, 8, 16, 16), dropout=0.0)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    for _ in range(25):
        x, y, _ = toy(16)
        loss = nn.functional.binary_cross_entropy_with_logits(m(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    m.eval()
    x, y, boxes = toy(20)
    with torch.no_grad(): acc = ((m(x) > 0).float() == y).float().mean().item()
    assert acc >= 0.9, f"toy model did not learn (accuracy {acc:.2f})"
    keep = y.numpy() == 1
    cams = gradcam(m, x[keep], 1)
    ratios = []
    for c, (r, cc) in zip(cams, [b for b, k in zip(boxes, keep) if k]):
        assert _inside(np.unravel_index(c.argmax(), c.shape), (r, cc), 16, pad=8)  # 8 px = half a layer4 cell
        ins = np.zeros(c.shape, bool); ins[r:r + 16, cc:cc + 16] = True
        ratios.append(c[ins].mean() / max(c[~ins].mean(), 1e-6))
    assert np.mean(np.array(ratios) > 1.5) >= 0.9


def test_gradcam_deterministic_and_restores_state(net):
    x = torch.rand(4, 3, 64, 64)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    a = gradcam(net, x, 1)
    assert net.training                                      # mode restored
    assert all(p.grad is None for p in net.parameters())     # gradients restored
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN stats untouched (eval inside)
    assert np.array_equal(a, gradcam(net, x, 1))
    assert np.array_equal(a[:2], gradcam(net, x, 1, batch_size=2)[:2])
    net.eval()


def test_gradcam_under_no_grad_and_frozen(net):
    x = torch.rand(2, 3, 64, 64)
    ref = gradcam(net, x, 0)
    for p in net.parameters(): p.requires_grad_(False)
    try:
        with torch.no_grad():
            out = gradcam(net, x.numpy(), 0)
    finally:
        for p in net.parameters(): p.requires_grad_(True)
    assert np.allclose(out, ref, atol=1e-6)


def test_gradcam_bad_input(net):
    with pytest.raises(ValueError, match="target"): gradcam(net, torch.rand(1, 3, 64, 64), target=2)
    with pytest.raises(ValueError, match="shape"): gradcam(net, torch.rand(64, 64))
    with pytest.raises(ValueError, match="NaN"): gradcam(net, torch.full((1, 3, 64, 64), float("nan")))
    with pytest.raises(ValueError, match="no layer"): gradcam(net, torch.rand(1, 3, 64, 64), layer="layer9")
    with pytest.raises(ValueError, match="scale"): gradcam(net, torch.rand(1, 3, 64, 64), scale="batch")


# ---------------------------------------------------------------- activations
def test_activation_maps_srescnn(net):
    x = torch.rand(3, 3, 64, 64)
    acts = activation_maps(net, x, batch_size=2)
    assert {k: v.shape for k, v in acts.items()} == {
        "stem": (3, 32, 32, 32), "layer1": (3, 32, 16, 16), "layer2": (3, 64, 8, 8),
        "layer3": (3, 128, 4, 4), "layer4": (3, 256, 4, 4)}
    with torch.no_grad():
        assert np.allclose(acts["layer4"], net.feature_maps(x).numpy(), atol=1e-5)
        assert np.allclose(acts["layer4"].mean((2, 3)), net.features(x).numpy(), atol=1e-5)
    assert all(not m._forward_hooks for m in net.modules())   # hooks removed
    one = activation_maps(net, x[0], layers=[net.layer2])
    assert list(one) == ["layer2"] and one["layer2"].shape == (1, 64, 8, 8)


def test_activation_maps_resnet(seqnet):
    acts = activation_maps(seqnet, torch.randn(1, 3, 64, 64))
    assert list(acts) == ["body.layer1", "body.layer2", "body.layer3", "body.layer4"]
    assert acts["body.layer4"].shape == (1, 512, 2, 2)


def test_top_filters():
    rng = np.random.default_rng(0)
    act = rng.random((2, 10, 4, 4))
    act[:, 7] += 5; act[:, 3] += 3
    assert top_filters(act, 2).tolist() == [7, 3]
    assert top_filters(act[0], 1).tolist() == [7]
    spike = np.zeros((10, 4, 4)); spike[5, 0, 0] = 100; spike[2] = 1
    assert top_filters(spike, 1, by="max").tolist() == [5]
    assert top_filters(spike, 1, by="mean").tolist() == [5]   # 100/16 > 1
    spike[5, 0, 0] = 10
    assert top_filters(spike, 1, by="mean").tolist() == [2] and top_filters(spike, 1, by="max").tolist() == [5]
    with pytest.raises(ValueError, match="between 1"): top_filters(act, 11)


# ---------------------------------------------------------------- clustering
def _planted(n_per=15, k=4, p=256, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(k), n_per)
    F = rng.normal(0, 1.5, (k, p))[truth] + rng.normal(0, 1, (k * n_per, p))
    ids = [f"P{i:03d}" for i in range(k * n_per)]
    feats = pd.DataFrame(F, columns=[f"f{i}" for i in range(p)]).assign(patient_id=ids)[["patient_id", *[f"f{i}" for i in range(p)]]]
    meta = pd.DataFrame({"patient_id": ids, "histology": np.where(truth % 2 == 0, "SCC", "ADC"),
                         "cohort": np.where(np.arange(len(ids)) % 2 == 0, "sph", "mcc")})
    return feats, meta, truth, rng


def _labels(res, feats):
    return res.clusters.set_index("patient_id").loc[feats.patient_id, "cluster"].astype(str).to_numpy()


def test_clustering_recovers_planted_groups_and_tests():
    feats, meta, truth, rng = _planted()
    meta["pdl1"] = np.where(rng.random(len(truth)) < 0.9, truth >= 2, truth < 2).astype(int)
    meta.loc[3, "pdl1"] = np.nan                                # an unlabeled patient is left out of the test
    res = cluster_deep_features(feats.sample(frac=1, random_state=0), meta)
    assert adjusted_rand_score(truth, _labels(res, feats)) == 1.0
    assert res.n_clusters == 4 and set(res.clusters.cluster) == {"G1", "G2", "G3", "G4"}
    # cluster names follow the dendrogram order
    first = res.clusters.set_index("patient_id").loc[res.z.index, "cluster"].astype(str)
    assert list(dict.fromkeys(first)) == ["G1", "G2", "G3", "G4"]
    t = res.tests["pdl1"]
    assert t.n == len(truth) - 1 and t.dof == 3 and t.p < 1e-6 and t.table.to_numpy().sum() == t.n
    # Pearson statistic by hand from the contingency table
    O = t.table.to_numpy(float); E = O.sum(1, keepdims=True) * O.sum(0, keepdims=True) / O.sum()
    assert np.isclose(t.statistic, ((O - E) ** 2 / E).sum())
    h = res.tests["histology"]
    assert h.dof == 3 and h.p < 1e-6
    assert set(res.summary().variable) == {"pdl1", "histology"}
    assert res.z.shape == (len(truth), 256)
    assert np.allclose(res.z.mean(), 0, atol=1e-10) and np.allclose(res.z.std(ddof=0), 1)


def test_chi2_p_is_calibrated_under_independence():
    "With PD-L1 independent of the clusters the χ² p-value is ~uniform (≈5 % below 0.05)."
    feats, meta, truth, rng = _planted(seed=3)
    res = cluster_deep_features(feats, meta)
    cl = res.clusters.set_index("patient_id")["cluster"]
    ps = np.array([chi_square(cl, pd.Series(rng.integers(0, 2, len(cl)), index=cl.index)).p for _ in range(300)])
    assert 0.015 <= np.mean(ps < 0.05) <= 0.10
    assert 0.4 <= np.median(ps) <= 0.65


def test_clustering_standardises_features():
    "Rescaling one feature by 1000 would dominate raw distances; after z-scoring the clusters do not change."
    feats, meta, truth, _ = _planted(seed=1)
    base = _labels(cluster_deep_features(feats, meta), feats)
    f2 = feats.copy()
    f2["f0"] = f2["f0"] * 1000 + 5
    f2["f1"] = 7.0                                         # a constant feature is set to 0, not NaN
    r2 = cluster_deep_features(f2, meta)
    assert (_labels(r2, feats) == base).all() and r2.constant_features == ["f1"]
    assert (r2.z["f1"] == 0).all()


def test_clustering_bad_input():
    feats, meta, truth, _ = _planted(n_per=3)
    bad = feats.copy(); bad.loc[2, "f5"] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*P002"): cluster_deep_features(bad, meta)
    with pytest.raises(ValueError, match="at least as many patients as clusters"):
        cluster_deep_features(feats.iloc[:3], meta)
    with pytest.raises(ValueError, match="n_clusters"): cluster_deep_features(feats, meta, n_clusters=1)
    with pytest.raises(ValueError, match="euclidean"): cluster_deep_features(feats, meta, metric="cosine")
    with pytest.raises(PDL1Error, match="not in the metadata"): cluster_deep_features(feats, meta.iloc[1:])
    with pytest.raises(PDL1Error, match="twice"): cluster_deep_features(pd.concat([feats, feats.iloc[:1]]), meta)
    with pytest.raises(ValueError, match="χ² test of pdl1: need at least two levels"):
        cluster_deep_features(feats, meta.assign(pdl1=1))
    ok = cluster_deep_features(feats, meta, method="average", metric="cosine", test_columns=("histology",))
    assert list(ok.tests) == ["histology"]


# ---------------------------------------------------------------- figures
def test_figures(net):
    x = torch.rand(2, 3, 64, 64)
    cp, cn = gradcam(net, x, 1), gradcam(net, x, 0)
    a4 = activation_maps(net, x, ["layer4"])["layer4"]
    f = plot_hyperimage_gradcam(x[0].numpy(), cp[0], cn[0], "t", filters={"f1": a4[0, 1], "f2": a4[0, 2]})
    assert len(f.axes) == 11 and [a.get_title() for a in f.axes[:5]] == ["CT", "PET", "fusion", "negative filter", "positive filter"]
    assert [a.get_label() for a in f.axes].count("<colorbar>") == 1                # 10 panels + the heat maps' colour bar
    plt.close(f)
    f = plot_hyperimage_gradcam(x[0].numpy(), gradcam(net, x, 1, upsample=False)[0], cn[0])   # 4×4 maps are resized
    assert len(f.axes) == 6 and f.axes[-1].get_label() == "<colorbar>"; plt.close(f)
    with pytest.raises(ValueError, match="PET, CT, fusion"): plot_hyperimage_gradcam(x[0, :1].numpy(), cp[0], cn[0])
    f = plot_activations(a4[0], k=5, image=x[0, 1].numpy())
    assert sum(a.get_title().startswith("filter") for a in f.axes) == 5; plt.close(f)
    planes = np.random.default_rng(0).random((3, 3, 32, 32))
    f = plot_mri_gradcam(planes, np.random.default_rng(1).random((3, 32, 32)), title="high")
    assert len(f.axes) == 10 and f.axes[5].get_title() == "T2WI sagittal" and f.axes[-1].get_label() == "<colorbar>"; plt.close(f)
    with pytest.raises(ValueError, match="do not match"): plot_mri_gradcam(planes, np.zeros((2, 32, 32)))


def test_feature_heatmap_order():
    feats, meta, truth, rng = _planted(n_per=6, p=32)
    meta["pdl1"] = (truth >= 2).astype(int)
    res = cluster_deep_features(feats, meta)
    fig = plot_feature_heatmap(res)
    g = fig.pdl1_grid
    order = np.asarray(g.data2d.columns)
    assert list(order) == list(res.z.index)               # heatmap columns in dendrogram order
    assert g.data2d.shape == (32, len(truth))
    leg = g.ax_col_dendrogram.get_legend()
    labels = [t.get_text() for t in leg.get_texts()]
    assert {"cluster: G1", "pdl1: 0", "pdl1: 1", "histology: SCC", "cohort: sph"} <= set(labels)
    cols = [tuple(h.get_facecolor()) for h in leg.legend_handles]
    assert len(set(cols)) == len(cols)                      # no two levels share a colour
    plt.close(fig)


# ---------------------------------------------------------------- real data
def test_gradcam_on_real_hyperimages(shared_data):
    import SimpleITK as sitk
    from pdl1_dls.petct.preprocess import hyperimages
    p = shared_data / "ibsi_sts_petct_mr" / "nifti" / "STS_003"
    if not (p / "CT_image.nii.gz").is_file(): pytest.skip("IBSI STS_003 PET/CT not in the shared data")
    hy = hyperimages(*(sitk.ReadImage(str(p / f)) for f in ("PET_image.nii.gz", "CT_image.nii.gz", "CT_mask.nii.gz")))
    seed_everything(0)
    m = make_model("pet")
    c = gradcam(m, hy.images[:, :1], 1)
    assert c.shape == (len(hy), 64, 64) and 0 <= c.min() and c.max() <= 1
    acts = activation_maps(m, hy.images[:, :1], ["layer4"])
    assert acts["layer4"].shape == (len(hy), 256, 4, 4)
