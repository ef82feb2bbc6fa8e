"External validation: `reproduce --model` applies a frozen bundle to a study it has not seen; nothing is trained or refitted."
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

NOTEBOOKS = ["mu2021_00_train_score", "mu2021_02_fig3_performance", "mu2021_06_fig2_explain"]   # 00 must be left out


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    "A bundle trained on one tiny synthetic PET/CT study, applied with reproduce --model to another (other seed)."
    from pdl1_dls.analysis import train_and_score
    from pdl1_dls.report import run_reproduction
    from pdl1_dls.synth import make_petct_study
    root = tmp_path_factory.mktemp("external")
    a = make_petct_study(root / "a", scale="tiny", seed=0)
    b = make_petct_study(root / "b", scale="tiny", seed=1)
    train_and_score(a, root / "train_run", seed=0, quick=True, models=("hyper",), epochs=1)
    bundle = root / "train_run" / "models" / "hyper"
    before = _tree(bundle)
    res = run_reproduction(b, root / "ext", seed=0, n_boot=100, quick=True, only=NOTEBOOKS, model=bundle, log=lambda *x: None)
    return dict(root=root, bundle=bundle, before=before, res=res, ext=root / "ext", b=b)


def test_nothing_trained_and_bundle_untouched(external):
    ext, res = external["ext"], external["res"]
    st = {s["notebook"]: s for s in res["notebooks"]}
    assert "mu2021_00_train_score" not in st                          # the training notebook does not run
    assert all(s["ok"] for s in st.values()), {k: v["error"] for k, v in st.items() if not v["ok"]}
    assert not (ext / "models").exists() and not list(ext.rglob("*.pt"))   # no weights in the output
    assert _tree(external["bundle"]) == external["before"]            # byte-identical bundle


def test_cutoff_and_scores_are_the_bundles(external):
    from pdl1_dls.training import load_model
    ext = external["ext"]
    model = load_model(external["bundle"])
    sj = json.loads((ext / "scores.json").read_text())
    assert sj["trained_here"] is False and sj["cutoff"] == model.cutoff
    assert Path(sj["models"]["dls"]) == external["bundle"].resolve()
    fresh = model.score(external["b"], ext.parent / "fresh", cache_dir=None, skip_bad=True)
    sc = pd.read_csv(ext / "scores.csv", dtype={"patient_id": str}).merge(fresh, on="patient_id", suffixes=("", "_fresh"))
    assert len(sc) == len(fresh) and np.allclose(sc["dls"], sc["dls_fresh"], atol=1e-6)
    cmp = pd.read_csv(ext / "comparisons.csv")
    cut = cmp[cmp["key"] == "cutoff"]
    assert len(cut) == 1 and cut["reproduced"].iloc[0] == pytest.approx(model.cutoff)   # the report's cutoff: the bundle's, not refitted


def test_report_names_the_model(external):
    ext = external["ext"]
    prov = json.loads((ext / "provenance.json").read_text())
    assert prov["model"] == {"hyper": str(external["bundle"].resolve())}
    html = (ext / "index.html").read_text()
    assert "External validation" in html and "Model card" in html and str(external["bundle"].resolve()) in html


def test_refuses_out_with_trained_models_or_inside_bundle(external, tmp_path):
    from pdl1_dls.core import PDL1Error
    from pdl1_dls.report import run_reproduction
    with pytest.raises(PDL1Error, match="holds trained models"):
        run_reproduction(external["b"], external["root"] / "train_run", model=external["bundle"], only=["mu2021_01"], log=lambda *x: None)
    before = _tree(external["bundle"])
    with pytest.raises(PDL1Error, match="inside the model bundle"):
        run_reproduction(external["b"], external["bundle"] / "x", model=external["bundle"], only=["mu2021_01"], log=lambda *x: None)
    from pdl1_dls.training import load_model
    with pytest.raises(PDL1Error, match="into a model bundle"):
        load_model(external["bundle"]).score(external["b"], external["bundle"] / "scores", skip_bad=True)
    assert _tree(external["bundle"]) == before and not (external["bundle"] / "x").exists()
