"""Speed of pdl1_dls.stats against plain references in the same run (median of repeats, ratio = reference / ours).

Run: .venv/bin/python benchmarks/stats.py [--repeats 5] [--quick]
Targets from issue 3 (R measured on the 2-core dev machine): DeLong CI at n=1e5 <= 0.04 s (pROC);
10,000-replicate SEN/SPEC bootstrap at n=500 <= 0.37 s (10x faster than pROC ci.coords, 3.7 s);
Harrell's C at n=1e5 < 0.36 s (R survival concordance).
"""
import argparse
import statistics
import time

import numpy as np


def med_time(f, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller reference loops")
    a = ap.parse_args()
    from sklearn.metrics import confusion_matrix, roc_auc_score
    from lifelines.utils import concordance_index
    from pdl1_dls.stats import roc, survival
    rng = np.random.default_rng(0)
    rows = []

    def row(task, ours, ref_name, ref, target=None):
        rows.append((task, ours, ref_name, ref, ref / ours if ref else float("nan"), target))

    # DeLong CI: ours vs a textbook O(n^2) DeLong at small n, and vs sklearn's AUC alone at large n
    def naive_delong(y, s):
        X, Y = s[y == 1], s[y == 0]
        psi = (X[:, None] > Y[None, :]) + 0.5 * (X[:, None] == Y[None, :])
        return psi.mean(1).var(ddof=1) / len(X) + psi.mean(0).var(ddof=1) / len(Y)
    y = rng.integers(0, 2, 5000); s = rng.normal(size=5000) + y
    row("DeLong CI n=5e3", med_time(lambda: roc.delong_ci(y, s), a.repeats),
        "naive O(n^2) DeLong", med_time(lambda: naive_delong(y, s), a.repeats))
    for n, tgt in ((10**5, "<= 0.04 s (pROC)"), (10**6, None)):
        y = rng.integers(0, 2, n); s = rng.normal(size=n) + y
        row(f"DeLong CI n={n:.0e}", med_time(lambda: roc.delong_ci(y, s), a.repeats),
            "sklearn roc_auc_score (AUC only)", med_time(lambda: roc_auc_score(y, s), a.repeats), tgt)

    # bootstrap at n = 500, 10,000 replicates
    n, B = 500, 10000
    y = rng.integers(0, 2, n); s = rng.normal(size=n) + y
    Bref = 1000 if a.quick else B

    def sk_sen_spec():
        r = np.random.default_rng(0)
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        for _ in range(Bref):
            i = np.concatenate([r.choice(pos, len(pos)), r.choice(neg, len(neg))])
            confusion_matrix(y[i], s[i] >= 0.5, labels=[0, 1])
    ref = med_time(sk_sen_spec, 1) * B / Bref
    row("SEN/SPEC bootstrap B=1e4 n=500", med_time(lambda: roc.binary_metrics(y, s, 0.5, n_boot=B), a.repeats),
        f"sklearn confusion_matrix loop{' (x10 of 1e3)' if a.quick else ''}", ref, "<= 0.37 s (10x pROC 3.7 s)")

    def sk_auc():
        r = np.random.default_rng(0)
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        for _ in range(Bref):
            i = np.concatenate([r.choice(pos, len(pos)), r.choice(neg, len(neg))])
            roc_auc_score(y[i], s[i])
    ref = med_time(sk_auc, 1) * B / Bref
    row("AUC bootstrap B=1e4 n=500", med_time(lambda: roc.bootstrap_auc(y, s, n_boot=B), a.repeats),
        f"sklearn roc_auc_score loop{' (x10 of 1e3)' if a.quick else ''}", ref)

    # Harrell's C at n = 1e5 (ours includes the IJ standard error)
    n = 10**5
    t = rng.exponential(size=n); e = rng.integers(0, 2, n); r = rng.normal(size=n) - t
    row("Harrell's C (+IJ se) n=1e5", med_time(lambda: survival.harrell_c(t, e, r), a.repeats),
        "lifelines concordance_index (C only)", med_time(lambda: concordance_index(t, -r, e), max(1, a.repeats // 2)),
        "< 0.36 s (R concordance)")

    w = max(len(x[0]) for x in rows)
    print(f"{'task':<{w}}  {'ours (s)':>9}  {'reference (s)':>13}  {'ref/ours':>8}  reference / target")
    for task, ours, rn, ref, ratio, tgt in rows:
        print(f"{task:<{w}}  {ours:9.4f}  {ref:13.4f}  {ratio:8.1f}  {rn}" + (f"; target {tgt}" if tgt else ""))


if __name__ == "__main__":
    main()
