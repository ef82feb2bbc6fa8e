"Training module: patient-level splits, class balance, permutation control, augmentation, determinism, checkpoints, resume."
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from pdl1_dls.petct import pipeline as T
from pdl1_dls.core import PDL1Error
from pdl1_dls.io import stack_slices
from pdl1_dls.petct.pipeline import TrainConfig, augment, fit, patient_mean, slice_weights, toy_patients
from pdl1_dls.training import load_model, load_state, permute_patient_labels, split_inner

FAST = dict(epochs=3, batch_size=16, patience=5)


@pytest.fixture(scope="module")
def toy():
    return toy_patients(16, slices=(2, 4), signal=1.0, seed=3)


def _log(d):
    return pd.read_csv(d / "train_log.csv").drop(columns="seconds")


def _same_weights(a, b):
    sa, sb = load_state(a), load_state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- splits and labels
def test_split_inner_patient_level_and_stratified():
    lab = {f"P{i:03d}": int(i % 4 == 0) for i in range(100)}   # 25 positive, 75 negative
    fit_ids, inner = split_inner(lab, 0.2, seed=0)
    assert not set(fit_ids) & set(inner) and set(fit_ids) | set(inner) == set(lab)
    assert sum(lab[p] for p in inner) == 5 and len(inner) == 20   # 20 % of each class
    assert split_inner(lab, 0.2, seed=0) == (fit_ids, inner)        # deterministic
    assert split_inner(lab, 0.2, seed=1)[1] != inner                 # seed matters


def test_split_needs_both_classes():
    with pytest.raises(PDL1Error, match="positive and negative"):
        split_inner({"a": 1, "b": 1, "c": 1}, 0.2)


def test_permutation_is_patient_level():
    lab = {f"P{i:03d}": int(i < 30) for i in range(80)}
    perm = permute_patient_labels(lab, seed=5)
    assert perm.keys() == lab.keys()                                   # one label per patient: slices follow it
    assert sorted(perm.values()) == sorted(lab.values())               # class counts kept
    agree = np.mean([perm[p] == lab[p] for p in lab])
    assert agree < 0.8                                                  # actually shuffled
    assert permute_patient_labels(lab, seed=5) == perm and permute_patient_labels(lab, seed=6) != perm


def _phi(a, b, ids):
    return float(np.corrcoef([a[p] for p in ids], [b[p] for p in ids])[0, 1])


def test_null_permutation_centred_not_biased():
    "The |φ| <= 0.1 redraw truncates φ symmetrically: over many seeds φ with the truth is centred on 0 on the cohort, fit and inner parts."
    lab = {f"P{i:03d}": int(i % 10 < 3) for i in range(120)}           # the demo's training cohort: 120 patients, 36 positive
    ph, raw = [], []
    for s in range(300):
        q = permute_patient_labels(lab, s)
        assert sorted(q.values()) == sorted(lab.values())              # class counts kept
        fit_ids, inner = split_inner(q, 0.2, s)
        ph.append([_phi(lab, q, sorted(lab)), _phi(lab, q, fit_ids), _phi(lab, q, inner)])
        raw.append(_phi(lab, permute_patient_labels(lab, s, max_phi=None), sorted(lab)))
    ph, raw = np.array(ph), np.array(raw)
    se = ph.std(0, ddof=1) / np.sqrt(len(ph))
    assert (np.abs(ph.mean(0)) < 3 * se + 0.005).all(), (ph.mean(0), se)   # centred: no push either way
    assert ((ph > 0).mean(0) > 0.35).all() and ((ph > 0).mean(0) < 0.65).all()
    assert np.abs(ph[:, 0]).max() <= 0.1 and ph[:, 2].std() > 0.1         # cohort truncated; the 24 inner patients are free
    assert abs(raw.mean()) < 3 * raw.std() / np.sqrt(len(raw)) + 0.005 and np.abs(raw).max() > 0.15   # any permutation: centred, wider
    assert len({tuple(sorted(permute_patient_labels(lab, s).items())) for s in range(50)}) == 50


def test_slices_stay_with_their_patient(toy):
    data, lab = toy
    pids = sorted(lab)
    X, owner = stack_slices(data, pids)
    assert len(X) == sum(len(data[p]) for p in pids)
    for i, p in enumerate(pids):   # every stacked slice is one of its owner's slices, in order
        assert torch.equal(X[owner == i], torch.from_numpy(data[p]))


def test_class_balance_weights():
    owner = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4])
    y = np.array([1, 1, 0, 0, 0])       # 2 positive patients (4 slices), 3 negative (7 slices)
    w = slice_weights(owner, y)
    pos = np.isin(owner, [0, 1])
    assert np.isclose(w[pos].sum(), w[~pos].sum())                                     # classes weigh the same
    per_patient = np.bincount(owner, weights=w)
    assert np.allclose(per_patient[:2], per_patient[0]) and np.allclose(per_patient[2:], per_patient[2])
    assert np.isclose(w.mean(), 1.0)


def test_patient_mean():
    owner = np.array([0, 0, 1, 1, 1])
    assert np.allclose(patient_mean(np.array([0.2, 0.4, 1, 0, 0.5]), owner, 2), [0.3, 0.5])
    assert patient_mean(np.ones((5, 256)), owner, 2).shape == (2, 256)


def test_augment_reproducible_and_pixel_preserving():
    x = torch.arange(64.).reshape(1, 1, 8, 8).repeat(32, 2, 1, 1)
    a = augment(x, torch.Generator().manual_seed(0), jitter=0)
    b = augment(x, torch.Generator().manual_seed(0), jitter=0)
    assert torch.equal(a, b)
    assert all(torch.equal(s.flatten().sort().values, x[0].flatten().sort().values) for s in a)
    assert len({tuple(s[0].flatten()[:3].tolist()) for s in a}) > 3        # several orientations drawn
    j = augment(x, torch.Generator().manual_seed(0), flip=False, rot90=False, jitter=0.1)
    assert not torch.equal(j, x) and (j - x).abs().max() <= 0.1 * 63 + 0.05 + 1e-4


# ---------------------------------------------------------------- training runs
def test_fit_no_patient_in_two_sets(toy, tmp_path):
    data, lab = toy
    res = fit(data, lab, TrainConfig(**FAST), tmp_path, device="cpu")
    assert not set(res["fit_patients"]) & set(res["inner_patients"])
    assert set(res["fit_patients"]) | set(res["inner_patients"]) == set(lab)
    assert not (tmp_path / "config.json").exists()                  # the bundle's model.json is written by train_study
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert list(log.epoch) == [1, 2, 3] and {"lr", "train_loss", "inner_auc", "inner_loss"} <= set(log.columns)
    # model.pt and checkpoint.pt load with weights_only=True (no pickled code)
    sd = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(sd) == set(res["model"].state_dict())
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 3 and len(ck["log"]) == 3
    assert all(torch.equal(sd[k], ck["stopper"]["best_state"][k]) for k in sd)
    assert res["best_epoch"] == ck["stopper"]["best_epoch"]


def test_fit_deterministic_for_seed(toy, tmp_path):
    data, lab = toy
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        fit(data, lab, TrainConfig(seed=seed, **FAST), tmp_path / name, device="cpu")
    assert _same_weights(tmp_path / "a/model.pt", tmp_path / "b/model.pt")
    assert (tmp_path / "a/model.pt").read_bytes() == (tmp_path / "b/model.pt").read_bytes()   # the file too, byte for byte
    pd.testing.assert_frame_equal(_log(tmp_path / "a"), _log(tmp_path / "b"))
    assert not _same_weights(tmp_path / "a/model.pt", tmp_path / "c/model.pt")


class Interrupt(Exception):
    pass


def test_resume_equals_uninterrupted(toy, tmp_path):
    data, lab = toy
    cfg = TrainConfig(seed=2, epochs=4, batch_size=16, patience=10)
    fit(data, lab, cfg, tmp_path / "full", device="cpu")

    def stop_after_2(epoch, row):
        if epoch == 2: raise Interrupt
    with pytest.raises(Interrupt):
        fit(data, lab, cfg, tmp_path / "cut", device="cpu", on_epoch_end=stop_after_2)
    assert not (tmp_path / "cut/model.pt").exists()
    assert torch.load(tmp_path / "cut/checkpoint.pt", weights_only=True)["epoch"] == 2
    seen = []
    res = fit(data, lab, cfg, tmp_path / "cut", device="cpu", resume=True, on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [3, 4]                                         # only the missing epochs ran
    assert _same_weights(tmp_path / "full/model.pt", tmp_path / "cut/model.pt")
    pd.testing.assert_frame_equal(_log(tmp_path / "full"), _log(tmp_path / "cut"))
    # a finished run resumes to the same result without training again
    seen.clear()
    fit(data, lab, cfg, tmp_path / "cut", device="cpu", on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [] and _same_weights(tmp_path / "full/model.pt", tmp_path / "cut/model.pt")


def test_resume_refuses_other_settings(toy, tmp_path):
    data, lab = toy
    fit(data, lab, TrainConfig(epochs=1, batch_size=16), tmp_path, device="cpu")
    with pytest.raises(PDL1Error, match="other settings"):
        fit(data, lab, TrainConfig(epochs=1, batch_size=16, lr=0.01), tmp_path, device="cpu")
    fit(data, lab, TrainConfig(epochs=1, batch_size=16, lr=0.01), tmp_path, device="cpu", resume=False)


def test_wrong_channels_rejected(toy, tmp_path):
    data, lab = toy
    with pytest.raises(PDL1Error, match="shape"):
        fit(data, lab, TrainConfig(channels="pet", **FAST), tmp_path, device="cpu")


# ---------------------------------------------------------------- study level, with stand-in hyper-images
class FakeStudy:
    "A stand-in for pdl1_dls.manifest.Study (roles, labels) so the study functions are tested without images."
    def __init__(self, modality="petct"):
        self.name, self.modality, self.path, self.label_column = "fake", modality, None, "pdl1"
        self.paper, self.label_rule = "mu2021", "tps>=1"
        rows = []
        for cohort, role, n, seed in (("tr", "train", 16, 1), ("va", "validation", 8, 2), ("ici", "ici", 4, 3)):
            data, lab = toy_patients(n, slices=(2, 4), signal=1.0, seed=seed, prefix=cohort)
            for p in data:
                rows.append(dict(patient_id=p, cohort=cohort, role=role, pdl1=np.nan if role == "ici" else lab[p]))
                self._data = {**getattr(self, "_data", {}), p: data[p]}
        self._t = pd.DataFrame(rows)

    def table(self):
        return self._t.copy()


@pytest.fixture
def fake(monkeypatch):
    st = FakeStudy()
    def hyper(study, table, cache_dir, params=None, mmap=True):
        keep = [p for p in table.patient_id if p != "tr000"]            # one patient "fails" preprocessing
        skipped = pd.DataFrame(dict(patient_id=["tr000"], reason=["ROI is empty"])) if "tr000" in set(table.patient_id) \
            else pd.DataFrame(columns=["patient_id", "reason"])
        return {p: SimpleNamespace(images=study._data[p]) for p in keep}, skipped
    monkeypatch.setattr(T, "_hyper", hyper)
    return st


def test_train_and_score_study_outputs(fake, tmp_path):
    run = tmp_path / "run"
    m = T.train_study(fake, run, seed=0, epochs=2, batch_size=16, device="cpu")
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
    for k in ("val_auc", "val_auc_lo", "val_auc_hi", "train_auc", "inner_auc", "best_epoch", "n_patients", "n_slices",
              "permuted", "seed"):
        assert k in saved
    assert saved["n_patients"] == dict(fit=12, inner=3, validation=8)   # tr000 skipped: 15 (8+, 7-); 20 % of each class inner
    assert saved["permuted"] is False and 0 <= saved["val_auc"] <= 1 and saved["permuted_label_phi"] is None
    assert saved["n_skipped"] == 1 and saved["skipped_reasons"] == {"ROI is empty": 1}
    bundle = sorted(p.name for p in run.iterdir())
    assert bundle == ["MODEL_CARD.md", "metrics.json", "model.json", "model.pt", "train_log.csv"]
    ids = set(fake.table().patient_id)
    assert not any(pid in (run / f).read_text() for f in bundle if f != "model.pt" for pid in ids)   # no identifier in the bundle
    df = load_model(run).score(fake, tmp_path / "scored", skip_bad=True)
    assert sorted(p.name for p in run.iterdir()) == bundle                     # nothing written into it
    assert list(df.columns) == ["patient_id", "cohort", "dls", "dls_high", "n_slices"]
    assert set(df.cohort) == {"tr", "va", "ici"} and len(df) == len(fake.table()) - 1   # unlabeled ICI cohort scored too
    assert df.dls.between(0, 1).all() and ((df.dls >= saved["cutoff"]) == (df.dls_high == 1)).all()
    with np.load(tmp_path / "scored" / "features.npz") as z:
        assert z["features"].shape == (len(df), 256) and list(z["patient_id"]) == df.patient_id.tolist()
    assert pd.read_csv(tmp_path / "scored" / "skipped.csv").patient_id.tolist() == ["tr000"]
    # the validation AUC of scoring equals the one measured at training time
    from pdl1_dls.stats.roc import auc_ci
    v = df[df.cohort == "va"].merge(fake.table(), on="patient_id")
    assert abs(auc_ci(v.pdl1, v.dls)["auc"] - saved["val_auc"]) < 1e-9
    # refusing bad data: the skipped patient is a one-line error naming it
    with pytest.raises(PDL1Error, match="patient=tr000.*ROI is empty"):
        load_model(run).score(fake, tmp_path / "refused")


def test_retrain_or_refuse_changed_settings(fake, tmp_path):
    "A changed setting on an existing bundle trains again, or with retrain=False is refused naming the key; the same one is reused."
    T.train_study(fake, tmp_path, seed=0, epochs=1, batch_size=16, device="cpu")
    ident = json.loads((tmp_path / "model.json").read_text())["identity"]
    seen = []
    T.train_study(fake, tmp_path, seed=0, epochs=1, batch_size=16, device="cpu", on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [] and json.loads((tmp_path / "model.json").read_text())["identity"] == ident        # same request: reused
    for change, key in ((dict(lr=0.01), "config.lr: 0.001 -> 0.01"), (dict(epochs=2), "config.epochs: 1 -> 2"),
                        (dict(channels="pet"), "config.channels: 'hyper' -> 'pet'")):
        kw = dict(dict(seed=0, epochs=1, batch_size=16, device="cpu"), **change)
        with pytest.raises(PDL1Error, match=key.replace("(", r"\(").replace(")", r"\)")):
            T.train_study(fake, tmp_path, retrain=False, **kw)
        assert json.loads((tmp_path / "model.json").read_text())["identity"] == ident                 # refused: untouched
    with pytest.warns(UserWarning, match="other settings"):
        m = T.train_study(fake, tmp_path, seed=0, epochs=1, batch_size=16, lr=0.01, device="cpu")
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["identity"] != ident and meta["config"]["lr"] == 0.01 and m["epochs_run"] == 1


def test_train_study_permuted_and_channels(fake, tmp_path):
    m = T.train_study(fake, tmp_path / "p", seed=0, permute_labels=True, channels="pet", epochs=1, batch_size=16, device="cpu")
    assert m["permuted"] is True and m["channels"] == "pet" and -1 <= m["permuted_label_phi"] < 1
    assert {"permuted_label_phi_fit", "permuted_label_phi_inner"} <= set(m)   # diagnostics of the parts the model fits and stops on
    meta = json.loads((tmp_path / "p/model.json").read_text())
    assert meta["config"]["permute_labels"] is True and meta["config"]["channels"] == "pet" and meta["score"] == "dls_pet"
    assert "null control" in (tmp_path / "p/MODEL_CARD.md").read_text()
    assert load_model(tmp_path / "p").net("cpu")[0].in_channels == 1


def test_mri_not_here(tmp_path):
    with pytest.raises(NotImplementedError, match=r"mri\.pipeline"):
        T.train_study(FakeStudy("mri"), tmp_path)
    with pytest.raises(PDL1Error, match="must be one of"):
        from pdl1_dls.training import pipeline
        pipeline("ct")
