"""Success metrics of SR backdoors: pixel ASR against the target image, label attainment, feature
shift, and a tally that sums their counts over batches and DDP ranks before dividing.

What each metric asks of a backdoored model ``f`` with clean input ``x``, triggered input ``x~``,
HR ground truth ``y``, the poisoned label ``y_p`` the training pairs taught (the target image for a
classic label, BadSR's ``eps``-bounded feature-aligned HR for a stealthy one) and the attacker's
target image ``y_t*``:

* **pixel ASR against the target image** (:func:`pixel_asr`): the triggered output reproduces
  ``y_t*`` (resized to the output size): PSNR >= 20 dB **and** SSIM >= 0.7, the criterion of the
  published SR-backdoor evaluation code. It is measured against ``y_t*`` for every label kind, so
  a stealthy label that only nudges the HR scores what it buys, not how good the clean SR is.
  Images whose *clean* output already meets it are left out (classification's convention).
* **label attainment** (:func:`label_attainment`): the fraction of the poisoned label's
  displacement that the trigger reproduces, ``a = <f(x~) - f(x), y_p - y> / ||y_p - y||^2`` per
  image: 1 for a perfectly learnt backdoor, about 0 for none. The SR error ``f(x) - y`` shared by
  both outputs cancels in ``f(x~) - f(x)``, so no image needs excluding; attainment-ASR
  (:func:`attainment_asr`) is the share of images with ``a >= threshold`` (0.5 by default).
* **feature-shift ratio** (:func:`feature_shift`, :class:`SuccessTally`): in the substitute's
  feature space, how far the trigger moves the output towards the target's features, divided by
  how far the poisoned labels themselves move the HR: the share of the labels' own shift the
  victim learnt (the plain feature shift has a ceiling far below 1 for ``eps``-bounded labels).
* **own effect** (:func:`own_effect`): a figure of the backdoored model minus the same figure of
  the *clean* model under the same trigger and label, paired over the validation images, with a
  95% Student-t interval. A trigger moves any model's output (a blend pulls it towards the
  pattern), so a model that learnt nothing can score a high attainment or ASR when the label
  points where the trigger pushes; the own effect is what only the backdoor explains.

Rates never read NaN: a rate with nothing included is ``None`` and prints ``"n/a (0 included)"``
(:class:`Rate`). Each rate carries its counts so a distributed run sums counts, not rates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from lit_sr.metrics import psnr, ssim
from lit_sr.poison.poisoned_hr import resize_target
from lit_sr.validation import check_images, check_number

NOT_APPLICABLE = "n/a (0 included)"
# The pixel-ASR criterion of the SR-backdoor literature (BadSR and earlier): within 20 dB PSNR and 0.7
# SSIM of the target image. The one definition every default below, callback and report uses.
PSNR_THR = 20.0
SSIM_THR = 0.7


class Rate(NamedTuple):
    """``num_success / num_included``, never NaN: ``value`` is ``None`` when nothing is included.

    ``str(rate)`` reads ``"85.7% (6/7)"``, or ``"n/a (0 included)"``.
    """

    num_success: float
    num_included: float

    @property
    def value(self) -> float | None:
        return self.num_success / self.num_included if self.num_included else None

    def __str__(self) -> str:
        if not self.num_included:
            return NOT_APPLICABLE
        return f"{self.value:.1%} ({int(self.num_success)}/{int(self.num_included)})"


class ASRResult(NamedTuple):
    """One ASR measurement.

    Attributes:
        rate: ``num_success / num_included``; ``None`` when no sample is included (never NaN).
        success: ``(N,)`` bool, the criterion met by the triggered output (also for excluded samples).
        included: ``(N,)`` bool, the sample counts.
        num_success: successes among the included samples.
        num_included: included samples.
    """

    rate: float | None
    success: torch.Tensor
    included: torch.Tensor
    num_success: int
    num_included: int

    def __str__(self) -> str:
        return str(Rate(self.num_success, self.num_included))


def _result(success: torch.Tensor, included: torch.Tensor) -> ASRResult:
    success, included = success.cpu(), included.cpu()
    num_included = int(included.sum())
    num_success = int((success & included).sum())
    return ASRResult(Rate(num_success, num_included).value, success, included, num_success, num_included)


def _as_batch(target: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    n, c, h, w = like.shape
    t = target if isinstance(target, torch.Tensor) and target.shape == like.shape else None
    if t is None:
        t = resize_target(target, n, h, w, c, name=name)
    return t.to(device=like.device, dtype=like.dtype)


def _check_same_shape(x: torch.Tensor, name: str, like: torch.Tensor, like_name: str) -> None:
    check_images(x, name)
    if x.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {tuple(like.shape)} (the shape of {like_name})")


def pixel_success(
    sr: torch.Tensor,
    target_sr: torch.Tensor,
    psnr_thr: float = PSNR_THR,
    ssim_thr: float = SSIM_THR,
    crop_border: int = 0,
    y_channel: bool = False,
) -> torch.Tensor:
    """``(N,)`` bool: ``PSNR(sr, target_sr) >= psnr_thr`` and ``SSIM(sr, target_sr) >= ssim_thr``
    (:mod:`lit_sr.metrics`: 8-bit rounded, BasicSR's SSIM). Arguments as in :func:`pixel_asr`."""
    p = psnr(sr, target_sr, crop_border=crop_border, y_channel=y_channel)
    s = ssim(sr, target_sr, crop_border=crop_border, y_channel=y_channel)
    return (p >= psnr_thr) & (s >= ssim_thr)


def pixel_asr(
    triggered_sr: torch.Tensor,
    target_sr: torch.Tensor,
    clean_sr: torch.Tensor | None = None,
    psnr_thr: float = PSNR_THR,
    ssim_thr: float = SSIM_THR,
    crop_border: int = 0,
    y_channel: bool = False,
) -> ASRResult:
    """Pixel ASR: the triggered output reproduces the backdoor's target image ``y_t*``.

    A sample succeeds when its triggered output is within ``PSNR >= psnr_thr`` dB **and**
    ``SSIM >= ssim_thr`` of the target image resized to the output size (the criterion of the
    SR-backdoor literature: 20 dB and 0.7). Pass the attacker's target image ``y_t*`` for every
    label kind: against BadSR's ``eps``-bounded poisoned HR a good *clean* output already succeeds,
    so the figure would track the SR quality, not the backdoor (use :func:`label_attainment` for
    what a stealthy label teaches). A sample whose clean output (``clean_sr``, the model on the
    untriggered input) already meets the criterion is excluded: the backdoor cannot take credit
    for it. Without ``clean_sr`` every sample is included. With nothing included the rate is
    ``None`` (printed ``"n/a (0 included)"``), never NaN.

    Args:
        triggered_sr: model outputs on triggered LR inputs, ``(N, C, H, W)`` in [0, 1].
        target_sr: the target image ``y_t*``: ``(N, C, H, W)``, or one image ``(C, h, w)`` /
            ``(1, C, h, w)`` for all, resized to the output size (MATLAB bicubic) if needed.
        clean_sr: model outputs on the clean LR inputs, like ``triggered_sr`` (optional).
        psnr_thr: PSNR threshold in dB. Default 20.
        ssim_thr: SSIM threshold. Default 0.7.
        crop_border: pixels cropped from each side before measuring.
        y_channel: measure on the BT.601 Y channel.

    Returns:
        :class:`ASRResult`.
    """
    check_images(triggered_sr, "triggered_sr")
    check_number(psnr_thr, "psnr_thr")
    check_number(ssim_thr, "ssim_thr", -1.0, 1.0)
    target = _as_batch(target_sr, triggered_sr, "target_sr")
    success = pixel_success(triggered_sr, target, psnr_thr, ssim_thr, crop_border, y_channel)
    if clean_sr is None:
        included = torch.ones_like(success)
    else:
        _check_same_shape(clean_sr, "clean_sr", triggered_sr, "triggered_sr")
        included = ~pixel_success(clean_sr, target, psnr_thr, ssim_thr, crop_border, y_channel)
    return _result(success, included)


def _feature_sq_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)


@torch.no_grad()
def feature_asr(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    triggered_sr: torch.Tensor,
    target: torch.Tensor,
    clean_sr: torch.Tensor,
    hr: torch.Tensor | None = None,
) -> ASRResult:
    """Feature ASR: in the substitute's feature space the triggered output looks like the target.

    With ``F = feature_fn`` and ``d`` the mean squared feature distance, a sample succeeds when
    ``d(F(triggered_sr), F(target)) < d(F(triggered_sr), F(clean_sr))``: the triggered output is
    closer to the target than to what the model produces without the trigger. The clean output
    is the reference of the criterion, so it cannot be tested against itself; when the HR ground
    truth ``hr`` is given, a sample is excluded if its clean output is already closer to the
    target than to ``hr`` (``d(F(clean_sr), F(target)) < d(F(clean_sr), F(hr))``). Without
    ``hr`` every sample is included.

    Args:
        feature_fn: ``images -> features``, e.g. :class:`lit_sr.poison.FeatureExtractor` around
            the substitute (the features BadSR's poisoned labels were aligned in).
        triggered_sr: outputs on triggered inputs, ``(N, C, H, W)`` in [0, 1].
        target: the target image, ``(N, C, H, W)`` or one image, resized to the output size.
        clean_sr: outputs on the clean inputs, like ``triggered_sr``.
        hr: HR ground truth, like ``triggered_sr`` (optional, for the exclusion).

    Returns:
        :class:`ASRResult`.
    """
    check_images(triggered_sr, "triggered_sr")
    _check_same_shape(clean_sr, "clean_sr", triggered_sr, "triggered_sr")
    goal = _as_batch(target, triggered_sr, "target")
    f_trig, f_goal, f_clean = feature_fn(triggered_sr), feature_fn(goal), feature_fn(clean_sr)
    success = _feature_sq_distance(f_trig, f_goal) < _feature_sq_distance(f_trig, f_clean)
    if hr is None:
        included = torch.ones_like(success)
    else:
        _check_same_shape(hr, "hr", triggered_sr, "triggered_sr")
        f_hr = feature_fn(hr)
        included = ~(_feature_sq_distance(f_clean, f_goal) < _feature_sq_distance(f_clean, f_hr))
    return _result(success, included)


@torch.no_grad()
def label_attainment(
    clean_sr: torch.Tensor, triggered_sr: torch.Tensor, hr: torch.Tensor, poisoned_hr: torch.Tensor
) -> torch.Tensor:
    """Per image, the fraction of the poisoned label's displacement that the trigger reproduces.

    ``a = <f(x~) - f(x), y_p - y> / ||y_p - y||^2`` (flattened over channels and pixels, float64):
    the length of the trigger's effect on the output projected on the direction the poisoned
    label moved the HR, in units of that move. 1 when the triggered output is the clean output
    plus exactly the label's displacement (a perfectly learnt backdoor), about 0 when the trigger
    changes nothing or moves the output orthogonally, above 1 for an overshoot, negative when it
    moves away. The SR error ``f(x) - y`` is shared by both outputs and cancels, so no image is
    excluded for being already good or bad. Where the label equals the HR (``||y_p - y|| = 0``:
    nothing was taught) the value is undefined and reads NaN; :func:`attainment_asr` and
    :class:`SuccessTally` leave those images out.

    Args:
        clean_sr: ``f(x)``, outputs on clean inputs, ``(N, C, H, W)``.
        triggered_sr: ``f(x~)``, outputs on triggered inputs, same shape.
        hr: ``y``, the HR ground truth, same shape.
        poisoned_hr: ``y_p``, the poisoned label the training pairs taught for these images (the
            target image resized to the HR size for a classic label), same shape.

    Returns:
        ``(N,)`` float64 on the inputs' device.
    """
    check_images(clean_sr, "clean_sr")
    for name, x in (("triggered_sr", triggered_sr), ("hr", hr), ("poisoned_hr", poisoned_hr)):
        _check_same_shape(x, name, clean_sr, "clean_sr")
    effect = (triggered_sr.double() - clean_sr.double()).flatten(1)
    displacement = (poisoned_hr.double() - hr.double()).flatten(1)
    norm2 = displacement.pow(2).sum(dim=1)
    a = (effect * displacement).sum(dim=1) / norm2.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(norm2 > 0, a, torch.full_like(a, math.nan))


def attainment_asr(attainment: torch.Tensor, threshold: float = 0.5) -> ASRResult:
    """Attainment-ASR: the share of images whose :func:`label_attainment` is ``>= threshold``.

    Images with an undefined attainment (NaN: the label equals the HR) are not included.

    Args:
        attainment: ``(N,)`` from :func:`label_attainment`.
        threshold: the attainment that counts as a success. Default 0.5: the trigger reproduces
            at least half of what the poisoned label taught (a choice of ours; the paper has no
            such criterion).
    """
    if not isinstance(attainment, torch.Tensor) or attainment.dim() != 1:
        raise ValueError(f"attainment must be a (N,) tensor from label_attainment; got {attainment!r:.80}")
    threshold = check_number(threshold, "threshold")
    included = torch.isfinite(attainment)
    return _result(included & (attainment >= threshold), included)


@torch.no_grad()
def feature_shift(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    reference: torch.Tensor,
    moved: torch.Tensor,
    target: torch.Tensor,
) -> torch.Tensor:
    """Per image, how far ``moved`` went from ``reference`` towards the target in feature space.

    ``(d(reference) - d(moved)) / d(reference)`` with ``d(x)`` the mean squared distance between
    ``feature_fn(x)`` and ``feature_fn(target)``: 0 when nothing moved, 1 when the features reach
    the target's, negative when they move away. With ``reference = f(x)`` and ``moved = f(x~)`` it
    is the trigger's shift; with ``reference = y`` and ``moved = y_p`` the shift the poisoned
    labels teach (the ceiling of the first: their ratio is the feature-shift ratio of
    :class:`SuccessTally`).

    Args:
        feature_fn: ``images -> features`` (the substitute's :class:`lit_sr.poison.FeatureExtractor`).
        reference, moved: ``(N, C, H, W)`` images.
        target: the target image, ``(N, C, H, W)`` or one image, resized to the images' size.

    Returns:
        ``(N,)`` float32.
    """
    check_images(reference, "reference")
    _check_same_shape(moved, "moved", reference, "reference")
    goal = feature_fn(_as_batch(target, reference, "target")).float()

    def dist(x: torch.Tensor) -> torch.Tensor:
        return (feature_fn(x).float() - goal).pow(2).flatten(1).mean(dim=1)

    base = dist(reference)
    return (base - dist(moved)) / base.clamp_min(1e-12)


@torch.no_grad()
def stealth(
    modified: torch.Tensor, original: torch.Tensor, crop_border: int = 0, y_channel: bool = False
) -> dict[str, torch.Tensor]:
    """Stealth of a modification (a poisoned HR label or a triggered LR input): per-image
    ``psnr`` and ``ssim`` of ``modified`` against ``original`` (:mod:`lit_sr.metrics`
    conventions), plus ``linf`` and ``rms`` of the raw difference on the [0, 1] scale.

    Args:
        modified: ``(N, C, H, W)`` in [0, 1].
        original: same shape.
        crop_border: pixels cropped from each side for PSNR/SSIM.
        y_channel: PSNR/SSIM on the Y channel.
    """
    check_images(modified, "modified")
    check_images(original, "original")
    if modified.shape != original.shape:
        raise ValueError(f"modified has shape {tuple(modified.shape)} but original has {tuple(original.shape)}")
    diff = (modified.float() - original.float()).flatten(1)
    return {
        "psnr": psnr(modified, original, crop_border, y_channel).cpu(),
        "ssim": ssim(modified, original, crop_border, y_channel).cpu(),
        "linf": diff.abs().amax(dim=1).cpu(),
        "rms": diff.pow(2).mean(dim=1).sqrt().cpu(),
    }


# --------------------------------------------------------------------------- own effect


class PairedDifference(NamedTuple):
    """Mean of paired differences with its two-sided Student-t interval.

    Attributes:
        mean: mean over the pairs of ``value - reference``.
        low, high: the interval's bounds; ``None`` with fewer than two pairs.
        n: the number of pairs used (non-finite pairs are left out).
        confidence: the interval's level.
    """

    mean: float
    low: float | None
    high: float | None
    n: int
    confidence: float = 0.95

    def __str__(self) -> str:
        if self.low is None:
            return f"{self.mean:+.2f} (n={self.n})"
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def _as_floats(values: Sequence[float | None] | torch.Tensor, name: str) -> list[float]:
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"{name} must be a (N,) tensor of per-image values; got shape {tuple(values.shape)}")
        values = values.detach().double().cpu().tolist()
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{name} must be a list or (N,) tensor of per-image values; got {type(values).__name__}")
    return [math.nan if v is None else float(v) for v in values]


def paired_difference(
    values: Sequence[float | None] | torch.Tensor,
    reference: Sequence[float | None] | torch.Tensor,
    confidence: float = 0.95,
) -> PairedDifference:
    """Mean of ``values[i] - reference[i]`` over the images and its Student-t interval (``n - 1``
    degrees of freedom; no interval for one pair). Pairs with a non-finite or ``None`` member (an
    infinite PSNR, an undefined attainment) are left out.

    Args:
        values, reference: per-image values of the same images in the same order.
        confidence: the interval's level, in (0, 1). Default 0.95.

    Raises:
        ValueError: different lengths, or no finite pair.
    """
    from scipy.stats import t as student_t

    check_number(confidence, "confidence", 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    a, b = _as_floats(values, "values"), _as_floats(reference, "reference")
    if len(a) != len(b):
        raise ValueError(f"paired values need the same images: {len(a)} values vs {len(b)} in the reference")
    d = [x - y for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    if not d:
        raise ValueError(f"no finite paired values among {len(a)} pairs")
    n = len(d)
    mean = sum(d) / n
    if n < 2:
        return PairedDifference(mean, None, None, n, confidence)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, n, confidence)


def own_effect(
    backdoored: Sequence[float | None] | torch.Tensor,
    clean: Sequence[float | None] | torch.Tensor,
    threshold: float | None = None,
    confidence: float = 0.95,
) -> PairedDifference:
    """The backdoor's own effect: a per-image figure of the backdoored model minus the clean
    model's, both measured under the same trigger and label, paired over the validation images.

    With per-image :func:`label_attainment` values it is the *own attainment*: about 0 when the
    trigger alone explains the backdoored model's attainment (the clean model, which learnt no
    backdoor, reaches the same), about 1 for a backdoor that reproduces the poisoned label beyond
    what the trigger does to any model. With ``threshold`` each value becomes the indicator
    ``value >= threshold`` first, so the result is the *own attainment-ASR* (a difference of two
    rates over the same images). Images whose value is undefined in either model (NaN or ``None``:
    the label equals the HR) are left out.

    Args:
        backdoored: per-image values of the backdoored model (e.g. ``attainment_per_image`` of
            :func:`callbacks.backdoor_eval.evaluate_backdoor`).
        clean: the clean model's values on the same images in the same order, under the same
            trigger and label.
        threshold: turn values into success indicators at this threshold (``None``: the values).
        confidence: the interval's level. Default 0.95.

    Returns:
        :class:`PairedDifference`.
    """
    a, b = _as_floats(backdoored, "backdoored"), _as_floats(clean, "clean")
    if threshold is not None:
        thr = check_number(threshold, "threshold")
        a = [float(v >= thr) if math.isfinite(v) else math.nan for v in a]
        b = [float(v >= thr) if math.isfinite(v) else math.nan for v in b]
    return paired_difference(a, b, confidence)


# --------------------------------------------------------------------------- tally and DDP sums

SumFn = Callable[[torch.Tensor], torch.Tensor]
COUNT_FIELDS = (
    "pixel_success", "pixel_included",
    "attainment_sum", "attainment_success", "attainment_included",
    "feature_shift_sum", "label_feature_shift_sum", "feature_count",
    "num_images",
)


def distributed_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks of the default ``torch.distributed`` process group (a copy);
    ``t`` itself when no process group is initialised (one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return t
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def strategy_sum(strategy: Any) -> SumFn:
    """A sum over ranks through a Lightning strategy (``trainer.strategy``): ``strategy.reduce(t,
    reduce_op="sum")``, which is the identity on one device."""
    if not callable(getattr(strategy, "reduce", None)):
        raise TypeError(f"strategy must have a reduce(tensor, reduce_op=...) method (trainer.strategy); got "
                        f"{type(strategy).__name__}")
    return lambda t: strategy.reduce(t, reduce_op="sum")


class SuccessTally:
    """Counts and sums of the success metrics over batches, summed over ranks, then divided once.

    :meth:`update` adds one batch: pixel ASR against the target image (clean-success exclusion),
    label attainment and attainment-ASR, and with a ``feature_fn`` the triggered and the label
    feature shifts. Further per-image figures (a clean PSNR-Y, ...) are declared by name in
    ``means`` and added with ``update(..., means={name: (N,) tensor})``; their non-finite values
    are left out of both sum and count. Under DDP every rank builds the tally with the same
    arguments, and :meth:`reduce` sums the state vector over ranks (a rank with no images adds
    zeros); then :meth:`results` divides. Nothing divides by zero: a rate or mean with nothing
    included is ``None`` (:class:`Rate` prints ``"n/a (0 included)"``).

    The **feature-shift ratio** is ``sum(triggered shift) / sum(label shift)`` over the images
    (:func:`feature_shift`): the share of the poisoned labels' own move towards the target's
    features that the victim reproduces with the trigger (a ratio of sums, not a mean of per-image
    ratios, so an image whose label barely moved cannot blow it up; ``None`` when the labels'
    total shift is not positive).

    Args:
        psnr_thr: pixel-ASR PSNR threshold in dB. Default 20.
        ssim_thr: pixel-ASR SSIM threshold. Default 0.7.
        attainment_thr: attainment-ASR threshold. Default 0.5.
        crop_border: pixels cropped from each side for the pixel ASR (0: the whole image).
        means: names of extra per-image figures averaged by the tally.
    """

    def __init__(
        self,
        psnr_thr: float = PSNR_THR,
        ssim_thr: float = SSIM_THR,
        attainment_thr: float = 0.5,
        crop_border: int = 0,
        means: Sequence[str] = (),
    ):
        self.psnr_thr = check_number(psnr_thr, "psnr_thr")
        self.ssim_thr = check_number(ssim_thr, "ssim_thr", -1.0, 1.0)
        self.attainment_thr = check_number(attainment_thr, "attainment_thr")
        self.crop_border = check_number(crop_border, "crop_border", 0, integer=True)
        names = list(means)
        if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"means must be distinct non-empty names; got {names}")
        clash = set(names) & set(COUNT_FIELDS)
        if clash:
            raise ValueError(f"means {sorted(clash)} clash with the tally's own fields {list(COUNT_FIELDS)}")
        self.mean_names = tuple(names)
        self.fields = COUNT_FIELDS + tuple(f"{n}{suffix}" for n in names for suffix in ("_sum", "_count"))
        self.sums = dict.fromkeys(self.fields, 0.0)

    @torch.no_grad()
    def update(
        self,
        clean_sr: torch.Tensor,
        triggered_sr: torch.Tensor,
        hr: torch.Tensor,
        poisoned_hr: torch.Tensor,
        target: torch.Tensor,
        feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        means: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Add one batch.

        Args:
            clean_sr, triggered_sr: model outputs on clean and triggered inputs, ``(N, C, H, W)``.
            hr: HR ground truth; ``poisoned_hr``: the label taught for these images; same shape.
            target: the attacker's target image ``y_t*`` (one image or a batch; resized).
            feature_fn: the substitute's features, for the feature shifts (``None``: skipped).
            means: per-image ``(N,)`` values of the names declared in ``means``.
        """
        s = self.sums
        pix = pixel_asr(triggered_sr, target, clean_sr, self.psnr_thr, self.ssim_thr, self.crop_border)
        s["pixel_success"] += pix.num_success
        s["pixel_included"] += pix.num_included
        a = label_attainment(clean_sr, triggered_sr, hr, poisoned_hr)
        att = attainment_asr(a, self.attainment_thr)
        s["attainment_sum"] += float(a[att.included.to(a.device)].sum())
        s["attainment_success"] += att.num_success
        s["attainment_included"] += att.num_included
        if feature_fn is not None:
            s["feature_shift_sum"] += float(feature_shift(feature_fn, clean_sr, triggered_sr, target).sum())
            s["label_feature_shift_sum"] += float(feature_shift(feature_fn, hr, poisoned_hr, target).sum())
            s["feature_count"] += clean_sr.shape[0]
        s["num_images"] += clean_sr.shape[0]
        for name, values in (means or {}).items():
            self.add_mean(name, values)

    def add_mean(self, name: str, values: torch.Tensor) -> None:
        """Add per-image values of the declared figure ``name`` (non-finite values left out)."""
        if name not in self.mean_names:
            raise KeyError(f"{name!r} is not one of the tally's declared means {list(self.mean_names)}")
        v = torch.as_tensor(values).detach().double().flatten()
        ok = torch.isfinite(v)
        self.sums[f"{name}_sum"] += float(v[ok].sum())
        self.sums[f"{name}_count"] += int(ok.sum())

    def as_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The state as a float64 vector (order: :attr:`fields`), for a sum over ranks."""
        return torch.tensor([self.sums[k] for k in self.fields], dtype=torch.float64, device=device)

    def load_tensor(self, t: torch.Tensor) -> None:
        """Set the state from a vector made by :meth:`as_tensor` (summed over ranks)."""
        if t.shape != (len(self.fields),):
            raise ValueError(f"expected a ({len(self.fields)},) state vector; got shape {tuple(t.shape)}")
        self.sums = {k: float(v) for k, v in zip(self.fields, t.double().cpu().tolist())}

    def reduce(self, sum_fn: SumFn = distributed_sum, device: torch.device | str = "cpu") -> None:
        """Replace the local counts by their sum over ranks: ``sum_fn`` is :func:`distributed_sum`
        (``torch.distributed``) or ``strategy_sum(trainer.strategy)``; ``device`` is where the
        vector travels (``cuda`` under NCCL)."""
        self.load_tensor(sum_fn(self.as_tensor(device)))

    def _mean(self, total: str, count: str) -> float | None:
        return self.sums[total] / self.sums[count] if self.sums[count] else None

    def results(self) -> dict[str, Any]:
        """The metrics: :class:`Rate` objects for the rates, ``float | None`` for the means.

        Keys: ``pixel_asr``, ``attainment_mean``, ``attainment_asr``, ``feature_shift`` (mean
        triggered shift), ``label_feature_shift`` (mean label shift), ``feature_shift_ratio``,
        ``num_images`` and each declared mean.
        """
        s = self.sums
        label_shift = s["label_feature_shift_sum"]
        out: dict[str, Any] = {
            "pixel_asr": Rate(s["pixel_success"], s["pixel_included"]),
            "attainment_mean": self._mean("attainment_sum", "attainment_included"),
            "attainment_asr": Rate(s["attainment_success"], s["attainment_included"]),
            "feature_shift": self._mean("feature_shift_sum", "feature_count"),
            "label_feature_shift": self._mean("label_feature_shift_sum", "feature_count"),
            "feature_shift_ratio": (s["feature_shift_sum"] / label_shift
                                    if s["feature_count"] and label_shift > 0 else None),
            "num_images": int(s["num_images"]),
        }
        out.update({n: self._mean(f"{n}_sum", f"{n}_count") for n in self.mean_names})
        return out

    def flat(self) -> dict[str, float | None]:
        """:meth:`results` as plain numbers for logs and JSON: each rate as ``<name>`` (``None``
        with nothing included) plus ``<name>_success`` and ``<name>_included``."""
        out: dict[str, float | None] = {}
        for name, value in self.results().items():
            if isinstance(value, Rate):
                out.update({name: value.value, f"{name}_success": value.num_success,
                            f"{name}_included": value.num_included})
            else:
                out[name] = value
        return out

    def figures(self) -> dict[str, float | None]:
        """The backdoor figures under the names every report and summary uses (one place renames
        :meth:`flat`'s keys): ``asr_pixel`` (with ``_success`` / ``_included``), ``attainment_mean``,
        ``attainment_asr`` (with its counts), each declared mean, and ``num_images``."""
        flat = self.flat()
        rates = {"asr_pixel": "pixel_asr", "attainment_asr": "attainment_asr"}
        out: dict[str, float | None] = {}
        for name, source in rates.items():
            out.update({name: flat[source], f"{name}_success": flat[f"{source}_success"],
                        f"{name}_included": flat[f"{source}_included"]})
            if name == "asr_pixel":
                out["attainment_mean"] = flat["attainment_mean"]
        out.update({k: flat[k] for k in self.mean_names})
        out["num_images"] = flat["num_images"]
        return out

    def formatted(self) -> dict[str, str]:
        """:meth:`results` as text: rates ``"85.7% (6/7)"`` or ``"n/a (0 included)"``, means to 4
        significant digits or ``"n/a (0 included)"``."""
        return {name: str(v) if isinstance(v, Rate) else (NOT_APPLICABLE if v is None else f"{v:.4g}")
                for name, v in self.results().items()}
