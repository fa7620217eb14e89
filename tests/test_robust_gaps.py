"""Two properties of the robustness report's building blocks that a wrong implementation would break
(issue 11, item 4): Choi's robustness index uses the L1 norm of the input gradient, and the universal
attack's sign step follows the gradient of the loss summed over the whole data set (Eq. 6), not
per-batch averages."""

import torch
from torch import nn

from lit_sr.archs import build_arch
from lit_sr.attacks import UniversalAttack, robustness_index
from lit_sr.attacks.base import sse_loss


def scaled_identity(c: float) -> nn.Module:
    """f(x) = c * x as a 1x1 convolution: the gradient of ||f(X) - f(X0)||_2 is c * Delta / ||Delta||_2."""
    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(c * torch.eye(3).view(3, 3, 1, 1))
    return conv


def test_robustness_index_is_the_l1_norm_of_the_gradient():
    c, alpha, n_samples = 3.0, 1 / 255, 16
    lr = torch.rand(2, 3, 8, 8) * 0.5 + 0.25
    index = robustness_index(scaled_identity(c), lr, alpha=alpha, n_samples=n_samples, batch_size=64, seed=7)
    # the same draws as the function (one batch of 2 x 16 rows from a generator seeded with 7)
    gen = torch.Generator().manual_seed(7)
    noise = torch.rand((2 * n_samples, 3, 8, 8), generator=gen) * (2 * alpha) - alpha
    flat = noise.flatten(1)
    l1_of_gradient = c * flat.abs().sum(1) / flat.norm(dim=1)
    expected = l1_of_gradient.view(2, n_samples).amax(dim=1)
    torch.testing.assert_close(index, expected, rtol=1e-4, atol=0)
    # an L2 norm of the gradient would give exactly c for every image: far from the L1 value (~ c * sqrt(3D) / 2)
    assert (index > 10 * c).all()


def test_universal_step_follows_the_gradient_summed_over_the_whole_data_set():
    torch.manual_seed(0)
    net = build_arch("edsr", num_feat=8, num_block=1, upscale=2).eval()
    lr = torch.rand(7, 3, 12, 12)
    lr[-1] = lr[-1] * 0.2  # one unlike image, alone in the last batch of 3 + 3 + 1
    hr = torch.rand(7, 3, 24, 24)
    eps, crop = 8 / 255, 8
    atk = UniversalAttack(net, eps=eps, steps=1, crop_size=crop, reference="hr", batch_size=3, progress=False)
    delta = atk.fit(lr, hr=hr).perturbation
    # by hand: one sign step of eps along the gradient of the loss summed over all 7 centre crops
    lo, hi = (12 - crop) // 2, (12 - crop) // 2 + crop
    crops, hr_crops = lr[..., lo:hi, lo:hi], hr[..., 2 * lo : 2 * hi, 2 * lo : 2 * hi]

    def gradient(images, targets):
        d = torch.zeros(1, 3, crop, crop, requires_grad=True)
        return torch.autograd.grad(sse_loss(net((images + d).clamp(0, 1)), targets).sum(), d)[0]

    whole = gradient(crops, hr_crops)
    torch.testing.assert_close(delta, eps * whole.sign())
    # averaging per batch (3, 3, 1 images) weights the last image 3x and moves some signs: the test sees it
    per_batch = sum(gradient(crops[s : s + 3], hr_crops[s : s + 3]) / len(crops[s : s + 3]) for s in (0, 3, 6))
    assert (per_batch.sign() != whole.sign()).any()


def test_report_measures_the_universal_attack_on_the_attacked_window_and_labels_the_whole_image():
    from lit_sr.attacks.spec import AttackRunner, parse_attacks
    from lit_sr.metrics import psnr

    torch.manual_seed(0)
    net = build_arch("edsr", num_feat=8, num_block=1, upscale=2).eval()
    lr, hr = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 48, 48)
    (spec,) = parse_attacks({"universal": {"steps": 3, "crop_size": 8}})
    assert spec.metric_keys()[-2:] == ("full_sr_psnr", "full_hr_psnr")
    runner = AttackRunner(spec, net, 8 / 255, y_channel=True)
    runner.fit(list(zip(lr, hr)))
    adv, metrics = runner.run(lr, hr)
    assert torch.equal(adv[..., :8, :], lr[..., :8, :])  # only the centre 8 x 8 window (rows 8..15) moves
    with torch.no_grad():
        clean, attacked = net(lr).clamp(0, 1), net(adv).clamp(0, 1)
    window = (slice(None), slice(None), slice(16, 32), slice(16, 32))  # the LR window x scale 2
    torch.testing.assert_close(metrics["sr_psnr"], psnr(attacked[window], clean[window], y_channel=True).double())
    torch.testing.assert_close(metrics["full_sr_psnr"], psnr(attacked, clean, y_channel=True).double())
    # the untouched border dilutes the whole-image PSNR: the attacked window's is lower
    assert (metrics["sr_psnr"] < metrics["full_sr_psnr"] - 1.0).all()
