"""The answer at the top of ``report.md``: do the maps of each method generalize? (issue 23)

Per setting (the runs that are seed replicates of one config) and per method, two numbers
decide, both read from the runs, never recomputed from anything else:

* the **gap**, test minus train interpretation loss (``MetricKey(L, "mean", "gap", "gap")``);
* the models' **agreement above chance** on test probes (Spearman above chance; where a run
  did not log it, SSIM, then top-k, then L2 below chance, and the line names which).

With one run of a setting the intervals are the run's own, over its probes: they cover probe
noise only, not the noise of training. With two or more seed replicates they are Student-t
intervals over the seeds (:func:`~lightning_saliency.report.seeds.seed_level`). The rule that
turns them into a word is :func:`generalization_verdict`, stated in :data:`VERDICT_RULE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lightning_saliency.generalization import Estimate
from lightning_saliency.generalization.input_bounds import SHARE_AT_BOUNDS
from lightning_saliency.generalization.studies import variant

from .intervals import bounds_of
from .order import run_method_key
from .runs import Run
from .seeds import seed_level
from .table import cell_text, fmt_x, md_escape

__all__ = ["AGREEMENT_METRICS", "VERDICT_RULE", "Answer", "answer_lines", "answers",
           "generalization_verdict"]  # fmt: skip

#: Agreement-above-chance metrics in order of preference (test probes), with their wording.
AGREEMENT_METRICS: tuple[tuple[str, str], ...] = (
    ("spearman_above_chance", "Spearman"), ("ssim_above_chance", "SSIM"),
    ("topk_above_chance", "top-k"), ("l2_above_chance", "L2 below chance"),
)  # fmt: skip

#: The verdict rule, in the words the report prints (:func:`generalization_verdict` applies it).
VERDICT_RULE = (
    "Verdict rule. Maps of a method **generalize** when the 95% interval of the gap (test "
    "minus train interpretation loss) includes 0 *and* the interval of the models' agreement "
    "above chance lies above 0: no train/test difference was found, and models trained on "
    "disjoint data agree more than maps of unrelated images do. A gap interval that includes 0 "
    "is not a finding that the gap is 0, only that none as large as its half-width was seen. "
    "They **do not generalize** when the gap's interval excludes 0 (either sign). Otherwise "
    "(agreement not shown above chance, or a number not logged) the report **cannot tell**."
)


def generalization_verdict(gap: Estimate | None, above: Estimate | None) -> str:
    """``"generalize"``, ``"do not generalize"`` or ``"cannot tell"`` (:data:`VERDICT_RULE`).

    >>> e = lambda v, lo, hi: Estimate(v, 0.01, lo, hi, 32)
    >>> generalization_verdict(e(0.004, -0.01, 0.02), e(0.04, 0.03, 0.06))
    'generalize'
    >>> generalization_verdict(e(0.03, 0.01, 0.05), e(0.04, 0.03, 0.06))
    'do not generalize'
    >>> generalization_verdict(e(0.004, -0.01, 0.02), e(0.01, -0.01, 0.03))
    'cannot tell'
    """
    if gap is not None and gap.is_finite and gap.excludes_zero:
        return "do not generalize"
    if gap is None or not gap.is_finite or above is None or not above.is_finite:
        return "cannot tell"
    return "generalize" if above.lo > 0 else "cannot tell"


@dataclass(frozen=True)
class Answer:
    """One method's verdict in one setting."""

    label: str
    gap: Estimate | None
    above: Estimate | None
    above_name: str  # which agreement was read (e.g. "Spearman")
    verdict: str
    share_at_bounds: Estimate | None = None  # the probes' share at the input bounds, if logged


def _combine(runs: Sequence[Run], key: tuple[str, str, str, str]) -> Estimate | None:
    """The run's estimate (one run), else the seed-level one (None if a run lacks it)."""
    values = [r.get(*key) for r in runs]
    if len(runs) == 1:
        return values[0]
    if any(v is None for v in values):
        return None
    return seed_level(values, bounds_of(key[3]))


def _answer(runs: Sequence[Run], label: str) -> Answer:
    gap = _combine(runs, (label, "mean", "gap", "gap"))
    above, name = None, AGREEMENT_METRICS[0][1]
    for metric, wording in AGREEMENT_METRICS:
        above = _combine(runs, (label, "pairs", "test", metric))
        if above is not None:
            name = wording
            break
    spec = runs[0].specs.get(label)
    share = None
    if spec is not None and variant(spec) == "adapt":
        share = _combine(runs, ("-", "mean", "test", SHARE_AT_BOUNDS))
    return Answer(label, gap, above, name, generalization_verdict(gap, above), share)


def _settings(runs: Sequence[Run]) -> list[list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.signature or f"run:{run.name}:{run.path}", []).append(run)
    return list(groups.values())


def answers(runs: Sequence[Run]) -> list[tuple[list[Run], list[Answer]]]:
    """Per setting (seed replicates grouped): its runs and one :class:`Answer` per method
    that logged a gap or an agreement, in the report's method order."""
    out = []
    order = run_method_key(runs)
    for group in _settings(runs):
        labels = sorted({lb for r in group for lb in r.labels}, key=order)
        found = [a for a in (_answer(group, lb) for lb in labels)
                 if a.gap is not None or a.above is not None]  # fmt: skip
        if found:
            out.append((group, found))
    return out


def _setting_title(group: Sequence[Run]) -> str:
    r = group[0]
    facts = [f"K={r.num_models}" if r.num_models is not None else None,
             f"split factor {r.split_factor}" if r.split_factor is not None else None,
             f"spectral-norm factor {fmt_x(r.spectral_norm_factor)}"
             if r.spectral_norm_factor is not None else None,
             f"{r.control} planted into split {r.control_split}" if r.control else None,
             r.backbone]  # fmt: skip
    names = ", ".join(sorted(x.name for x in group))
    basis = (f"intervals over {len(group)} seeds (training noise)" if len(group) > 1 else
             "one run: intervals over its probes cover probe noise only, not training noise")  # fmt: skip
    return (f"**{md_escape(names)}** ({', '.join(f for f in facts if f)}; epoch {r.epoch}; "
            f"{basis})")  # fmt: skip


def _line(a: Answer) -> str:
    gap = f"gap {cell_text(a.gap)}"
    agree = f"models agree above chance ({a.above_name}, test) {cell_text(a.above)}"
    if a.verdict == "do not generalize":
        head = f"maps of `{a.label}` **do not generalize** ({gap}); {agree}"
    elif a.verdict == "generalize":
        head = f"maps of `{a.label}` **generalize**: {gap}; {agree}"
    else:
        head = f"maps of `{a.label}`: **cannot tell**: {gap}; {agree}"
    if a.share_at_bounds is not None:
        head += (f" (probes' share of pixels at the input bounds, where AdaptGrad adds no "
                 f"noise: {cell_text(a.share_at_bounds)})")  # fmt: skip
    return f"- {head}"


def answer_lines(runs: Sequence[Run]) -> list[str]:
    """The report's opening section: the verdict rule, then per setting one line per method
    (nothing when no run logged a gap or an agreement)."""
    found = answers(runs)
    if not found:
        return []
    md = ["## Do the maps generalize?", "", VERDICT_RULE, ""]
    for group, items in found:
        md += [_setting_title(group) + ":", "", *(_line(a) for a in items), ""]
    return md
