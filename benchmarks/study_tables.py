"""Markdown tables of a finished learning study, as docs/reproducing-the-paper.md cites them.

    .venv/bin/python benchmarks/study_tables.py DIR/lr_scaling.json [DIR2/lr_scaling.json ...]
    .venv/bin/python benchmarks/study_tables.py DIR/optimizers.json
    .venv/bin/python benchmarks/study_tables.py --convergence B/lr_scaling.json 2B/lr_scaling.json [8B/...] [--figure PNG]

lr_scaling.json: per N and warm-up, each rule's final-window held-out loss, accuracy and F1
(mean ± 95 % CI half-width over seeds) and the study's ``rule_comparison`` (best rule per
figure, Welch p-values against it); then the run count and summed wall time of the study.
optimizers.json: per optimizer, warm-up and N, the FOVs to the target (or comparable) level
and the final-window figures. ``--convergence``: the issue's convergence check, the same
points at budget B and 2B (with and without warm-up): each figure's mean ± 95 % CI at both,
and the change with its Welch 95 % CI; with ``--figure``, the mean held-out accuracy and loss
curves (bands: 95 % CI over seeds) of both budgets against FOVs. Prints to standard output;
reads nothing but the JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(stat: dict | float | None, digits: int = 3) -> str:
    if isinstance(stat, dict):
        m, ci = stat.get("mean"), stat.get("ci95")
        if m is None:
            return "–"
        return f"{m:.{digits}f} ± {ci:.{digits}f}" if ci is not None else f"{m:.{digits}f}"
    return "–" if stat is None else f"{stat:.{digits}f}"


def _finals(point: dict, metric: str) -> list[float]:
    """The final-window ``metric`` of each of a point's runs (the values its mean and CI are of)."""
    return [r["final"][metric] for r in point["runs"] if r["final"].get(metric) is not None]


def _runs(points: list[dict]) -> tuple[int, float]:
    """Distinct runs (a run shared by two points counts once) and their summed wall seconds."""
    seen = {}
    for p in points:
        for r in p.get("runs", []):
            seen[r["run_dir"]] = r.get("wall_s") or 0.0
    return len(seen), sum(seen.values())


def lr_scaling(report: dict) -> None:
    c = report["config"]
    print(f"model {c['model']}, {c['fovs']} FOVs per run, seeds {c['seeds']}, {c['evaluations']} evaluations of {c['eval_examples']}")
    print()
    print("| N | rule | warm-up | LR | loss | accuracy | F1 |")
    print("|---:|---|---|---:|---|---|---|")
    pts = sorted((p for p in report["points"] if p["rule"] != "grid"), key=lambda p: (p["workers"], p["warmup"], p["rule"]))
    for p in pts:
        if p["workers"] == 1 and p["rule"] != "none":
            continue  # all rules are the base LR at N = 1
        print(
            f"| {p['workers']} | {p['rule'] if p['workers'] > 1 else 'all'} | {'yes' if p['warmup'] else 'no'} | {p['learning_rate']:.3g} | "
            f"{_f(p['loss'])} | {_f(p['accuracy'])} | {_f(p['f1'])} |"
        )
    comp = report.get("rule_comparison") or []
    if comp:
        print()
        print("| N | warm-up | figure | best rule | others: difference (Welch p) | separable at p < 0.05 |")
        print("|---:|---|---|---|---|---|")
        for r in comp:
            others = "; ".join(
                f"{k} {v['difference']:+.3f} (p {v['p_value']:.2g})" for k, v in r["others"].items() if v["p_value"] is not None
            )
            print(
                f"| {r['workers']} | {'yes' if r['warmup'] else 'no'} | {r['metric']} | {r['best_rule']} | {others} | {'yes' if r['separable'] else 'no'} |"
            )
    grid = [p for p in report["points"] if p["rule"] == "grid"]
    if grid:
        print()
        print("| N | warm-up | LR | loss | accuracy | normalised accuracy |")
        print("|---:|---|---:|---|---|---:|")
        for p in sorted(grid, key=lambda p: (p["workers"], p["warmup"], p["learning_rate"])):
            na = p.get("normalized_accuracy")
            print(
                f"| {p['workers']} | {'yes' if p['warmup'] else 'no'} | {p['learning_rate']:.3g} | {_f(p['loss'])} | {_f(p['accuracy'])} | "
                f"{'–' if na is None else f'{na:.3f}'} |"
            )
    if grid:
        grid_summary(report["points"])
    n, wall = _runs(report["points"])
    print(f"\n{n} runs, {wall / 3600:.2f} h of run wall time in all (runs in parallel count each)")


def grid_summary(points: list[dict], metric: str = "accuracy") -> None:
    """The paper's form in one row per (N, warm-up): the grid's best LR by mean ``metric``, each
    rule's LR as a multiple of it with its normalised score, and Welch p of the best against it."""
    from scipy.stats import ttest_ind

    print()
    print(f"| N | warm-up | best LR ({metric}) | none: LR / best, normalised, p | sqrt | linear |")
    print("|---:|---|---|---|---|---|")
    for n in sorted({p["workers"] for p in points}):
        for warm in (False, True):
            sub = [p for p in points if p["workers"] == n and p["warmup"] == warm and p[metric]["mean"] is not None]
            if not any(p["rule"] == "grid" for p in sub):
                continue
            best = max(sub, key=lambda p: p[metric]["mean"])  # over the grid and the rules' rates
            cells = []
            for rule in ("none", "sqrt", "linear"):
                q = next((p for p in sub if p["rule"] == rule), None)
                if q is None:
                    cells.append("–")
                    continue
                same = abs(q["learning_rate"] - best["learning_rate"]) < 1e-12
                pv = None if same else float(ttest_ind(_finals(best, metric), _finals(q, metric), equal_var=False).pvalue)
                norm = q[metric]["mean"] / best[metric]["mean"]
                cells.append(f"×{q['learning_rate'] / best['learning_rate']:.3g}, {norm:.3f}" + ("" if pv is None else f", p {pv:.2g}"))
            print(f"| {n} | {'yes' if warm else 'no'} | {best['learning_rate']:.3g} ({_f(best[metric])}) | " + " | ".join(cells) + " |")


def _level(stat: dict | None, point: dict) -> str:
    """FOVs to a level: mean ± CI over the runs that reached it, and how many of the seeds did."""
    if not stat:
        return "–"
    return f"{_f(stat, 0)} ({stat.get('reached', 0)}/{point.get('seeds', '?')})"


def optimizers(report: dict) -> None:
    c = report["config"]
    print(
        f"model {c.get('model')}, {c.get('fovs')} FOVs per run, seeds {c.get('seeds')}, target {c.get('target_accuracy')} "
        f"(reached by any: {c.get('target_reached_by_any')}), comparable level {c.get('comparable_accuracy')}"
    )
    print()
    print(
        "| optimizer | LR | warm-up | N | best accuracy | loss (final window) | FOVs to target | FOVs to comparable level | modelled wall s |"
    )
    print("|---|---:|---|---:|---|---|---|---|---:|")
    for p in report["points"]:
        mw = p.get("modelled_wall_s")
        mw = mw.get("mean") if isinstance(mw, dict) else mw
        print(
            f"| {p['optimizer']} | {p.get('learning_rate', 0):.3g} | {'yes' if p['warmup'] else 'no'} | {p['workers']} | {_f(p.get('best_accuracy'))} | "
            f"{_f(p.get('loss'))} | {_level(p.get('fovs_to_target'), p)} | {_level(p.get('fovs_to_comparable'), p)} | "
            f"{'–' if mw is None else f'{mw:.0f}'} |"
        )
    n, wall = _runs(report["points"])
    print(f"\n{n} runs, {wall / 3600:.2f} h of run wall time in all")


def _welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of ``b`` minus mean of ``a`` and the half-width of its Welch 95 % CI."""
    import numpy as np
    from scipy.stats import t

    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    va, vb = a_.var(ddof=1) / len(a_), b_.var(ddof=1) / len(b_)
    dof = (va + vb) ** 2 / (va**2 / (len(a_) - 1) + vb**2 / (len(b_) - 1))
    return float(b_.mean() - a_.mean()), float(t.ppf(0.975, dof) * np.sqrt(va + vb))


def convergence(path_b: str, path_2b: str) -> None:
    rb, r2b = (json.loads(Path(p).read_text()) for p in (path_b, path_2b))
    print(
        f"budget {rb['config']['fovs']} FOVs ({rb['config']['evaluations']} evaluations per run) against "
        f"{r2b['config']['fovs']} FOVs ({r2b['config']['evaluations']})"
    )
    print()
    print("| N | LR | warm-up | figure | seeds | at the first budget | at the second | change (Welch 95 % CI) |")
    print("|---:|---:|---|---|---:|---|---|---|")
    for p in rb["points"]:
        if p["workers"] == 1 and p["rule"] not in ("none", "grid"):
            continue
        key = (p["workers"], p["learning_rate"], p["warmup"])
        q = next((q for q in r2b["points"] if (q["workers"], q["learning_rate"], q["warmup"]) == key), None)
        if q is None:
            continue
        for m in ("accuracy", "loss", "f1"):
            a, b = _finals(p, m), _finals(q, m)
            d, ci = _welch(a, b)
            print(
                f"| {p['workers']} | {p['learning_rate']:.3g} | {'yes' if p['warmup'] else 'no'} | {m} | {len(a)}/{len(b)} | "
                f"{_f(p[m])} | {_f(q[m])} | {d:+.3f} ± {ci:.3f} |"
            )


def convergence_figure(paths: list[str], out: str) -> None:
    """Mean accuracy and loss against FOVs at N = 1, one line per budget, LR and warm-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from neuroflood.studies.statistics import mean_curve

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    lines = 0
    for path in paths:
        report = json.loads(Path(path).read_text())
        for p in report["points"]:
            if p["workers"] != 1 or p["rule"] not in ("none", "grid"):
                continue
            curve = mean_curve(p["runs"])
            warm = "warm-up" if p["warmup"] else "no warm-up"
            label = f"{report['config']['fovs']:,} FOVs, LR {p['learning_rate']:g}, {warm} ({p['seeds']} seeds)"
            color = f"C{lines % 10}"
            lines += 1
            for ax, m in zip(axes, ("accuracy", "loss")):
                x = [c["fovs"] for c in curve]
                y = [c[m] for c in curve]
                ci = [c[f"{m}_ci95"] or 0.0 for c in curve]
                ax.plot(x, y, "-", color=color, label=label, lw=1.2)
                if p["seeds"] >= 3:  # with 2 seeds t = 12.7: a band as wide as the axis
                    ax.fill_between(x, [a - b for a, b in zip(y, ci)], [a + b for a, b in zip(y, ci)], color=color, alpha=0.15, lw=0)
    for ax, m in zip(axes, ("held-out accuracy (p ≥ 0.9)", "held-out loss")):
        ax.set_xlabel("FOVs trained (N = 1)")
        ax.set_ylabel(f"{m}, mean ± 95 % CI")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylim(0.4, 0.95)
    axes[1].set_ylim(0.2, 0.6)  # the first evaluations' loss would flatten the rest
    axes[0].legend(fontsize=8, loc="lower right")
    axes[0].set_title("Convergence check (N = 1): held-out accuracy")
    axes[1].set_title("Convergence check (N = 1): held-out loss")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    if sys.argv[1:2] == ["--convergence"]:
        args = sys.argv[2:]
        figure = None
        if "--figure" in args:
            i = args.index("--figure")
            figure, args = args[i + 1], args[:i] + args[i + 2 :]
        for first, second in zip(args, args[1:]):
            convergence(first, second)
            print()
        if figure:
            convergence_figure(args, figure)
        return
    for path in sys.argv[1:]:
        report = json.loads(Path(path).read_text())
        print(f"## {path}\n")
        {"lr-scaling": lr_scaling, "optimizers": optimizers}[report["study"]](report)
        print()


if __name__ == "__main__":
    main()
