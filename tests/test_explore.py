"pdl1_dls.explore: the explorers' logic on a small finished run, checked against independent computations."
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdl1_dls.core import PDL1Error


def make_run(root: Path) -> Path:
    """A tiny synthetic study and a run folder scored by the real pipeline (`train_and_score`) with an
    untrained, seeded SResCNN placed where training would put it: everything the explorers read
    (scores.csv, models/hyper, provenance.json) is made as in a real run, in seconds instead of minutes."""
    from dataclasses import asdict
    from pdl1_dls.analysis import train_and_score
    from pdl1_dls.core import seed_everything, write_json
    from pdl1_dls.petct.srescnn import make_model
    from pdl1_dls.synth import make_petct_study
    from pdl1_dls.petct.pipeline import TrainConfig, save_state
    m = make_petct_study(root / "study", scale="tiny", seed=0)
    run = root / "run"
    train_and_score(m, run, quick=True, models=("hyper",), epochs=1)   # one quick epoch: a real bundle, scores of every patient
    (run / "provenance.json").write_text(json.dumps({"manifest": str(m)}))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("explore"))


def test_open_run_reads_without_writing(run_dir):
    from pdl1_dls.analysis import training_cutoff
    from pdl1_dls.explore import open_run
    before = sorted(p.name for p in run_dir.iterdir())
    r = open_run(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == before          # read-only: no cutoff.json written
    sc = pd.read_csv(run_dir / "scores.csv", dtype={"patient_id": str})
    assert r.table["dls"].notna().sum() == sc["dls"].notna().sum() > 0
    assert r.cutoff == pytest.approx(training_cutoff(r.table, r.study.label_column, "dls"), abs=1e-6)   # the bundle's training Youden
    assert ((r.table["dls"] >= r.cutoff) == (r.table["dls_high"] == 1))[r.table["dls"].notna()].all()


def test_open_run_errors(tmp_path, run_dir):
    from pdl1_dls.explore import open_run
    with pytest.raises(PDL1Error, match="run folder not found"): open_run(tmp_path / "nope")
    with pytest.raises(PDL1Error, match="no scores.csv"): open_run(tmp_path)
    (tmp_path / "scores.csv").write_text((run_dir / "scores.csv").read_text())
    with pytest.raises(PDL1Error, match="provenance.json"): open_run(tmp_path)


def test_default_run_dir(monkeypatch, tmp_path):
    from pdl1_dls.explore import RUN_ENV, default_run_dir
    monkeypatch.setenv(RUN_ENV, str(tmp_path))
    assert default_run_dir() == tmp_path
    monkeypatch.delenv(RUN_ENV)
    assert default_run_dir().parts[-2:] == ("runs", "demo")


def test_survival_dls_matches_lifelines(run_dir):
    from lifelines import CoxPHFitter, KaplanMeierFitter
    from lifelines.statistics import logrank_test
    from pdl1_dls.explore import POOLED_ICI, SurvivalExplorer
    sx = SurvivalExplorer(run_dir)
    assert sx.cohort == POOLED_ICI and sx.endpoints == ["pfs", "os"]
    assert set(sx.groupings) == {"dls", "pdl1", "histology", "ecog"}
    t = sx.table
    ici = t[(t.role == "ici") & t.pfs_months.notna() & t.dls.notna()]
    cut = float(np.median(ici.dls))
    v = sx.set(cutoff=cut).compute()
    hi = (ici.dls >= cut).to_numpy()
    assert v.n == len(ici) and (v.data.group == "high DLS").sum() == hi.sum()
    assert v.groups == ["low DLS", "high DLS"]
    # independent references: lifelines' log-rank and Cox (Efron), KM survival at the last event of each group
    lr = logrank_test(ici.pfs_months[hi], ici.pfs_months[~hi], ici.pfs_event[hi], ici.pfs_event[~hi])
    assert v.logrank_p == pytest.approx(lr.p_value, rel=1e-6)
    f = CoxPHFitter().fit(pd.DataFrame({"x": hi.astype(float), "t": ici.pfs_months, "e": ici.pfs_event}), "t", "e", fit_options={"precision": 1e-10, "max_steps": 500})
    assert v.hr.loc["high DLS", "hr"] == pytest.approx(float(np.exp(f.params_["x"])), rel=1e-4)
    lo, up = np.exp(f.confidence_intervals_.loc["x"]).to_numpy()
    assert (v.hr.loc["high DLS", "hr_lo"], v.hr.loc["high DLS", "hr_hi"]) == (pytest.approx(lo, rel=1e-3), pytest.approx(up, rel=1e-3))
    for g, m in (("high DLS", hi), ("low DLS", ~hi)):
        k = KaplanMeierFitter().fit(ici.pfs_months[m], ici.pfs_event[m])
        tab = v.km[g].table
        assert np.allclose(tab.surv.to_numpy(), k.survival_function_.loc[tab.time.to_numpy()].to_numpy().ravel())
        assert v.at_risk.loc[g].iloc[0] == m.sum()
    # moving the cutoff moves patients and changes the HR
    cut2 = float(np.quantile(ici.dls, 0.25))
    v2 = sx.set(cutoff=cut2).compute()
    assert (v2.data.group == "high DLS").sum() == (ici.dls >= cut2).sum() != hi.sum()
    assert v2.hr.loc["high DLS", "hr"] != v.hr.loc["high DLS", "hr"]
    assert "HR high DLS vs low DLS" in v2.summary() and "log-rank p=" in v2.summary()


def test_survival_other_groupings(run_dir):
    from pdl1_dls.explore import SurvivalExplorer
    sx = SurvivalExplorer(run_dir)
    c = [c for c in sx.cohorts() if sx.study.cohorts.get(c) is not None and sx.study.cohorts[c].role == "ici"][0]
    t = sx.table[(sx.table.cohort == c) & sx.table.os_months.notna()]
    v = sx.set(cohort=c, endpoint="os", grouping="pdl1").compute()
    assert v.n == t.pdl1.notna().sum() and v.cutoff is None
    assert set(v.groups) <= {"PD-L1 negative", "PD-L1 positive"}
    v = sx.set(grouping="ecog").compute()
    assert v.n == len(t) and v.groups == sorted(f"ECOG {int(e)}" for e in t.ecog.unique())
    assert len(v.hr) == len(v.groups) - 1 or v.note
    v = sx.set(grouping="histology").compute()
    assert v.groups[0] == t.histology.value_counts().sort_index().idxmax()   # most frequent (ties: first by name)
    with pytest.raises(ValueError, match="grouping must be one of"): sx.set(grouping="age")
    with pytest.raises(ValueError, match="endpoint must be one of"): sx.set(endpoint="dfs")
    with pytest.raises(ValueError, match="cohort must be one of"): sx.set(cohort="nope")


def test_survival_one_group_is_a_note(run_dir):
    from pdl1_dls.explore import SurvivalExplorer, plot_survival
    sx = SurvivalExplorer(run_dir)
    v = sx.set(grouping="dls", cutoff=-1.0).compute()            # everyone high
    assert v.groups == ["high DLS"] and v.hr.empty and v.logrank_p is None and "only one group" in v.note
    fig = plot_survival(v)
    assert len(fig.axes[0].lines) >= 1


def test_survival_figure_changes_with_cutoff(run_dir):
    from pdl1_dls.explore import SurvivalExplorer, fig_png, plot_survival
    sx = SurvivalExplorer(run_dir)
    d = sx.patients()
    a = fig_png(plot_survival(sx.set(cutoff=float(d.shape[0] and sx.table.dls.median())).compute()))
    b = fig_png(plot_survival(sx.set(cutoff=float(sx.table.dls.quantile(0.9))).compute()))
    assert a[:8] == b"\x89PNG\r\n\x1a\n" and a != b


def test_gradcam_explorer(run_dir):
    from pdl1_dls.explain import gradcam
    from pdl1_dls.explore import GradcamExplorer
    from pdl1_dls.petct.preprocess import patient_hyperimages
    gx = GradcamExplorer(run_dir)
    assert gx.model_names == ["hyper"]
    assert gx.cohorts() == list(gx.study.cohorts)
    c = gx.cohorts()[0]
    pids = gx.patients(c)
    assert pids == sorted(gx.table.loc[(gx.table.cohort == c) & gx.table.dls.notna(), "patient_id"])
    p, q = pids[0], pids[1]
    row = gx.table.set_index("patient_id").loc[p]
    hi = patient_hyperimages(p, row.pet, row.ct, row.roi)
    assert gx.slices(p) == hi.slices.tolist()
    cams = gx.cams(p, "hyper", 1)
    net, _ = gx.model("hyper")
    assert np.allclose(cams, gradcam(net, hi.images, target=1), atol=1e-5)
    assert cams.shape == (len(hi), 64, 64) and 0 <= cams.min() and cams.max() <= 1
    assert not np.allclose(gx.cams(p, "hyper", 0), cams)             # negative filter differs
    inf = gx.info(p)
    sc = pd.read_csv(run_dir / "scores.csv", dtype={"patient_id": str}).set_index("patient_id")
    assert inf["dls"] == pytest.approx(sc.loc[p, "dls"]) and inf["cutoff"] == gx.run.cutoff
    assert inf["group"] == ("high DLS" if inf["dls"] >= inf["cutoff"] else "low DLS")
    assert inf["label"] == row.pdl1 and inf["ihc"] == row.pdl1_tps
    assert inf["extra"] == {} and gx.slice_label(p, 1) == f"CT slice {hi.slices[1]}"
    fig = gx.figure(p, 0)
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(panels) == 5 and len(fig.axes) == 6 and p in fig._suptitle.get_text()   # 5 panels and the Grad-CAM colour bar and f"{inf['dls']:.3f}" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="slice_pos"): gx.figure(p, len(hi))
    with pytest.raises(ValueError, match="model must be one of"): gx.cams(p, "pet")
    with pytest.raises(PDL1Error, match="not in the study"): gx.info("nobody")


def test_explore_external_validation_run(run_dir, tmp_path):
    """A run scored with a bundle trained elsewhere (`reproduce --model`: `apply_models(..., trained_here=False)`) has no
    models/ folder; the explorers open it from scores.json, with that bundle's cutoff, and show the same maps."""
    import shutil
    import matplotlib.pyplot as plt
    from pdl1_dls.analysis import apply_models, run_models
    from pdl1_dls.explore import GradcamExplorer, open_run
    from pdl1_dls.training import load_model
    ext = tmp_path / "bundles" / "their_model"                        # a bundle somewhere else, under another name
    shutil.copytree(run_dir / "models" / "hyper", ext)
    here = open_run(run_dir)
    out = tmp_path / "external"
    apply_models(here.study, {"their_model": ext}, out, trained_here=False)
    (out / "provenance.json").write_text(json.dumps({"manifest": str(here.study.path)}))
    assert not (out / "models").exists() and json.loads((out / "scores.json").read_text())["trained_here"] is False
    r = open_run(out)
    assert r.models == run_models(out) == {"dls": ext.resolve()} and r.cutoff == load_model(ext).cutoff
    gx, g0 = GradcamExplorer(r), GradcamExplorer(here)
    assert gx.model_names == ["hyper"] and gx.models["hyper"]["bundle"] == ext.resolve()
    p = gx.patients(gx.cohorts()[-1])[0]
    assert gx.slices(p) == g0.slices(p)
    assert np.allclose(gx.cams(p, "hyper", 1), g0.cams(p, "hyper", 1), atol=1e-6)   # same weights, same inputs, same maps
    sc = pd.read_csv(out / "scores.csv", dtype={"patient_id": str}).set_index("patient_id")
    inf = gx.info(p)
    assert inf["dls"] == pytest.approx(sc.loc[p, "dls"]) and inf["cutoff"] == r.cutoff
    fig = gx.figure(p, 0)
    assert "hyper model" in fig._suptitle.get_text()
    plt.close(fig)


def test_apps_drive_without_browser(run_dir):
    from pdl1_dls.explore import gradcam_app, survival_app

    def find(box, cls):
        out = []
        for w in getattr(box, "children", ()):
            if cls in getattr(w, "_dom_classes", ()): out.append(w)
            out += find(w, cls)
        return out
    box = survival_app(run_dir)
    (hr,), (img,), (cut,) = find(box, "pdl1-hr"), find(box, "pdl1-figure"), find(box, "pdl1-cutoff")
    v0, i0 = hr.value, img.value
    d = box.explorer.patients().sort_values("time")
    tab = box.explorer.table
    shown = np.sort(tab.loc[tab["patient_id"].isin(d["patient_id"]), "dls"].dropna().to_numpy())   # a cutoff that moves shown patients
    now = int((shown >= box.explorer.cutoff).sum())
    new = next(float(v) for v in shown[1:] if int((shown >= v).sum()) != now and int((shown >= v).sum()) > 1)
    cut.value = min(max(new, cut.min), cut.max)
    assert hr.value != v0 and img.value != i0 and box.explorer.cutoff == cut.value
    assert "pdl1-cutoff-warning" not in v0 and "not the training cutoff" in hr.value   # a cutoff chosen by looking is flagged
    (grp,) = find(box, "pdl1-grouping")
    grp.value = "histology"
    assert "vs" in hr.value and cut.layout.visibility == "hidden"
    g = gradcam_app(run_dir)
    (pat,), (gimg,), (info,) = find(g, "pdl1-patient"), find(g, "pdl1-figure"), find(g, "pdl1-info")
    i0, t0 = gimg.value, info.value
    pat.value = pat.options[1]
    assert gimg.value != i0 and pat.options[1] in info.value and info.value != t0
    (coh,) = find(g, "pdl1-cohort")
    coh.value = coh.options[-1]
    assert pat.value == pat.options[0] and pat.value.startswith(coh.value)


def test_voila_command_is_local():
    from pdl1_dls.explore import EXPLORERS, explorers_dir, voila_command
    cmd = voila_command(8899)
    assert "--Voila.ip=127.0.0.1" in cmd and "--no-browser" in cmd and "--port=8899" in cmd
    assert all((explorers_dir() / n).is_file() for n in EXPLORERS)


@pytest.fixture(scope="module")
def mri_run_dir(tmp_path_factory):
    "A tiny synthetic MRI study quick-trained and scored by the real pipeline, with provenance.json as reproduce writes it."
    from pdl1_dls.analysis import train_and_score
    from pdl1_dls.synth import make_mri_study
    root = tmp_path_factory.mktemp("explore_mri")
    m = make_mri_study(root / "study", scale="tiny", seed=0)
    run = root / "run"
    train_and_score(m, run, seed=0, quick=True)
    (run / "provenance.json").write_text(json.dumps({"manifest": str(m)}))
    return run


def test_gradcam_explorer_mri(mri_run_dir):
    "MRI runs: one model per sequence, the three maximum-area planes as slices, the fused DLS and cutoff, Grad-CAM per sequence."
    import matplotlib.pyplot as plt
    import pandas as pd
    import torch
    import torch.nn.functional as F
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
    from pdl1_dls.explore import GradcamExplorer, gradcam_app
    from pdl1_dls.mri.pipeline import MRIRun, _prep
    gx = GradcamExplorer(mri_run_dir)
    assert gx.pipe.modality == "mri" and gx.model_names == ["t1", "t2", "ce_t1"]
    pid = gx.patients(gx.cohorts()[0])[0]
    inp = gx.inputs(pid, "ce_t1")
    x, meta = inp["images"], inp["meta"]
    assert x.shape[:2] == (3, 3) and len(gx.slices(pid)) == 3
    assert gx.slices(pid) == [meta["slice_index"][q] for q in ("axial", "coronal", "sagittal")]
    assert gx.slice_label(pid, 1).startswith("coronal plane, slice ")
    inf = gx.info(pid, "ce_t1")
    sc = pd.read_csv(mri_run_dir / "scores.csv", dtype={"patient_id": str}).set_index("patient_id")
    assert inf["dls"] == pytest.approx(sc.loc[pid, "dls"])
    assert inf["extra"] == {"ce_t1 CNN probability": pytest.approx(sc.loc[pid, "dls_ce_t1"])}
    assert inf["cutoff"] == pytest.approx(gx.run.cutoff)
    # the map is the mean Grad-CAM of the sequence's CNNs over the run's members on the normalised input, resized; the
    # reference is pytorch-grad-cam's own binary target called directly (what the dropped mri_gradcam did): equal to 1e-6
    run = MRIRun.load(mri_run_dir / "models" / "mri")
    xi = _prep(x[2][None], *run.zscore[2], run.cfg.input_size)
    def library(m):
        with GradCAM(model=m.eval(), target_layers=[m.target_layer]) as cam:
            return cam(input_tensor=xi, targets=[BinaryClassifierOutputTarget(1)])
    per_member = [library(m.models[2]) for m in run.members]
    assert len(per_member) == 2 and not np.allclose(per_member[0], per_member[1])
    assert np.allclose(run.gradcam(x[2], 2, 1), np.mean(per_member, 0), atol=1e-6, rtol=0)
    ref = np.mean(per_member, 0)
    ref = F.interpolate(torch.as_tensor(ref, dtype=torch.float32)[:, None], size=x.shape[-2:], mode="bilinear")[0, 0].numpy()
    cams = gx.cams(pid, "ce_t1", 1)
    assert cams.shape == (3, *x.shape[-2:]) and np.allclose(cams[0], cams[2]) and 0 <= cams.min() and cams.max() <= 1
    assert np.allclose(cams[1], ref, atol=1e-6)
    assert not np.allclose(gx.cams(pid, "t1", 1), cams)          # another sequence, another CNN, another map
    fig = gx.figure(pid, 2, "t2", 0)
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(panels) == 4 and len(fig.axes) == 5 and "sagittal plane" in fig._suptitle.get_text()   # and the colour bar and "fused DLS" in fig._suptitle.get_text()
    assert "t2 CNN probability" in fig._suptitle.get_text()
    plt.close(fig)
    with pytest.raises(ValueError, match="model must be one of"): gx.figure(pid, 0, "hyper", 1)
    box = gradcam_app(mri_run_dir)
    assert box.explorer.pipe.modality == "mri"


# ---------------------------------------------------------------- serving (no server started here: tests/test_browser.py runs one)

def test_serve_refuses_before_starting_anything(tmp_path, run_dir):
    "A non-loopback interface or a kernel cap below 1 is refused before Voila starts or a temp folder is made."
    import tempfile
    from pdl1_dls.explore import serve
    before = set(Path(tempfile.gettempdir()).glob("pdl1-voila-*"))
    for ip in ("0.0.0.0", "192.168.1.10", "::", "example.org"):
        with pytest.raises(PDL1Error, match="loopback address only"): serve(run_dir, ip=ip)
    with pytest.raises(PDL1Error, match="max_kernels"): serve(run_dir, max_kernels=0)
    with pytest.raises(PDL1Error, match="run folder not found"): serve(tmp_path / "nope", block=False)
    assert set(Path(tempfile.gettempdir()).glob("pdl1-voila-*")) == before


def test_host_check_and_voila_command():
    "Only the loopback names with the server's port are answered; the token never appears on Voila's command line."
    import sys
    from pdl1_dls.explore import CULL_IDLE_S, allowed_hosts, voila_command
    assert allowed_hosts(8866) == {"127.0.0.1:8866", "localhost:8866", "[::1]:8866"}
    assert allowed_hosts(8866, "127.0.0.2") == {"127.0.0.1:8866", "localhost:8866", "[::1]:8866", "127.0.0.2:8866"}
    cmd = voila_command(9000, max_kernels=3, owned_dir="/tmp/x")
    assert cmd[:2] == [sys.executable, "-c"] and "voila_main" in cmd[2]
    for a in ("--port=9000", "--Voila.ip=127.0.0.1", "--Voila.port_retries=0", "--PDL1Voila.max_kernels=3",
              f"--MappingKernelManager.cull_idle_timeout={CULL_IDLE_S}", "--Voila.connection_dir_root=/tmp/x"):
        assert a in cmd, a
    assert not any("token" in a.lower() for a in cmd)


def test_capped_kernel_manager_counts_starting_kernels():
    "Two page loads at once: the one that would exceed the cap is refused with 503 while the other is still starting."
    import asyncio
    from tornado.web import HTTPError
    from pdl1_dls.explore import capped_kernel_manager

    class Slow:
        def __init__(self): self.ids = []
        def __contains__(self, k): return k in self.ids
        def list_kernel_ids(self): return list(self.ids)
        async def start_kernel(self, kernel_id=None, **kw):
            if kernel_id in self: return kernel_id
            await asyncio.sleep(0.05)
            self.ids.append(f"k{len(self.ids)}")
            return self.ids[-1]

    km = capped_kernel_manager(Slow, cap=1)()
    async def two():
        return await asyncio.gather(km.start_kernel(), km.start_kernel(), return_exceptions=True)
    a, b = asyncio.run(two())
    assert a == "k0" and isinstance(b, HTTPError) and b.status_code == 503 and km._starting == 0
    assert asyncio.run(km.start_kernel(kernel_id="k0")) == "k0"      # an existing kernel is not a new one: not refused
