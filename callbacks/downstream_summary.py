"""The Markdown table :class:`callbacks.downstream_eval.DownstreamEvalCallback` writes after an evaluation.

One row per condition (``hr``, ``bicubic``, ``sr_clean``, ``sr_triggered``, ``backdoor_target``, ``sr_<attack>``) with
the downstream figures, then, for a backdoored run, the SR-level success metrics of
:mod:`lit_sr.poison.asr` as ``BackdoorEvalCallback`` logged them, so the downstream ASR stands
next to them.
"""

from __future__ import annotations

from collections.abc import Mapping

from lit_sr.tables import fmt, markdown_lines

CONDITION_ORDER = ("hr", "bicubic", "sr_clean", "sr_triggered", "backdoor_target")
CLASSIFIER_COLUMNS = (("top1", "top-1"), ("agreement", "agreement with HR"), ("asr", "downstream ASR"), ("n", "images"))
DETECTOR_COLUMNS = (("map_50", "mAP@0.5"), ("map", "mAP@[.5:.95]"), ("vanished", "vanished"),
                    ("hallucinated", "hallucinated"))
BACKDOOR_KEYS = (("asr_pixel", "pixel ASR (PSNR >= 20 dB and SSIM >= 0.7 to the target)"),
                 ("attainment_asr", "attainment ASR (a >= 0.5)"), ("attainment_mean", "mean label attainment a"),
                 ("clean_psnr_y", "clean PSNR-Y (dB)"), ("triggered_psnr_y", "triggered PSNR-Y vs HR (dB)"),
                 ("target_psnr", "triggered output vs target PSNR (dB)"))


def _conditions(results: Mapping[str, float], task: str) -> list[str]:
    found = {k.split("/")[2] for k in results if k.startswith(f"downstream/{task}/")}
    return [c for c in CONDITION_ORDER if c in found] + sorted(found - set(CONDITION_ORDER))


def _cell(value: float | None, percent: bool) -> str:
    return fmt(value, (lambda v: f"{100 * v:.1f}%") if percent else ".4g")


def summary_markdown(results: Mapping[str, float], backdoor: Mapping[str, float], target: str | None,
                     epoch: int, step: int) -> str:
    """The table of one evaluation (``results``: the callback's ``downstream/...`` figures)."""
    lines = [f"## Downstream checks (epoch {epoch}, step {step})", ""]
    for task, columns in (("classifier", CLASSIFIER_COLUMNS), ("detector", DETECTOR_COLUMNS)):
        conditions = _conditions(results, task)
        if not conditions:
            continue
        cols = [(k, name) for k, name in columns if any(f"downstream/{task}/{c}/{k}" in results for c in conditions)]
        head = [f"{name}{f' (target {target})' if k == 'asr' and target else ''}" for k, name in cols]
        table = [[cond, *(_cell(results.get(f"downstream/{task}/{cond}/{k}"), percent=k != "n") for k, _ in cols)]
                 for cond in conditions]
        lines += [f"{task}:", "", *markdown_lines(["condition", *head], table), ""]
    if backdoor:
        table = [[name, _cell(backdoor[f"backdoor/{key}"], percent=key.endswith("asr") or key.startswith("asr"))]
                 for key, name in BACKDOOR_KEYS if backdoor.get(f"backdoor/{key}") is not None]
        lines += ["SR-level backdoor metrics (BackdoorEvalCallback, lit_sr.poison.asr):", "",
                  *markdown_lines(["metric", "value"], table), ""]
    return "\n".join(lines)
