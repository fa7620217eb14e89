"""Adversarial attacks on the LR input of SR models (Choi et al., ICCV 2019), torchattacks-style.

Attacks are objects built with validated hyper-parameters and called on batches::

    atk = IFGSM(model, eps=8 / 255, steps=50, reference="hr")
    lr_adv = atk(lr, hr=hr)
    metrics = attack_metrics(model, lr, lr_adv, hr=hr, crop_border=4, y_channel=True)

They work on any ``nn.Module`` mapping LR to SR, batched on the model's device, optionally under
bf16 autocast; the model's modes and ``requires_grad`` flags are restored after every call and no
``.grad`` is left on it. Nothing here imports Lightning.

=====================  ==========================================================
:class:`IFGSM`         basic attack, Eq. (1)-(3) (reference ``"clean"`` or ``"hr"``)
:class:`PGD`           IFGSM with a random start and 2.5 eps/T steps
:class:`FastFGSM`      one FGSM step from a random start (Wong et al. 2020)
:class:`UniversalAttack`  one perturbation for a data set, Eq. (5)-(7)
:class:`PartialAttack` perturb the centre, damage the outside, Eq. (8)-(10)
:class:`TargetedAttack`  pull the output towards a target, Eq. (11)
:class:`SquareAttack`  query-only black-box attack on the SR distortion
:func:`robustness_index`  CLEVER-style gradient index, Sec. 5.2
:func:`transfer_matrix`   source x target PSNR table, Fig. 4
:func:`attack_metrics`    LR/SR PSNR, SSIM (masked), LPIPS per image
=====================  ==========================================================

Every attack class registers itself under its ``name`` (:mod:`lit_sr.attacks.registry`); a new
attack is one module here and one import line below (docs/extending.md).
"""

from lit_sr.attacks.base import LOSSES, Attack, frozen_eval, l2_loss, mse_loss, sse_loss
from lit_sr.attacks.evaluation import attack_metrics, masked_ssim
from lit_sr.attacks.ifgsm import IFGSM, PGD, FastFGSM, SignGradientAttack, TargetedAttack
from lit_sr.attacks.partial import PartialAttack, centre_mask, infer_scale, outer_hr_mask, upscale_mask
from lit_sr.attacks.registry import ATTACKS, plain_kinds, register_attack
from lit_sr.attacks.robustness import robustness_index, transfer_matrix
from lit_sr.attacks.spec import (
    AttackRunner,
    AttackSpec,
    eps_label,
    eps_text,
    make_target,
    parse_attacks,
    parse_eps,
    parse_eps_list,
    predict,
    shape_batches,
)
from lit_sr.attacks.square import SquareAttack, square_fraction
from lit_sr.attacks.universal import UniversalAttack, center_crop

__all__ = [
    "AttackRunner",
    "AttackSpec",
    "eps_label",
    "eps_text",
    "make_target",
    "parse_attacks",
    "parse_eps",
    "parse_eps_list",
    "predict",
    "shape_batches",
    "LOSSES",
    "IFGSM",
    "PGD",
    "ATTACKS",
    "Attack",
    "FastFGSM",
    "PartialAttack",
    "SignGradientAttack",
    "SquareAttack",
    "TargetedAttack",
    "UniversalAttack",
    "attack_metrics",
    "center_crop",
    "centre_mask",
    "frozen_eval",
    "infer_scale",
    "l2_loss",
    "masked_ssim",
    "mse_loss",
    "outer_hr_mask",
    "plain_kinds",
    "register_attack",
    "robustness_index",
    "square_fraction",
    "sse_loss",
    "transfer_matrix",
    "upscale_mask",
]
