"""lit_sr.robust_report: the worst case is the minimum over attacks, restarts and transferred attacks."""

import torch

from lit_sr.archs import build_arch
from lit_sr.robust_report import default_eval_attacks, markdown_table, worst_case_psnr


def test_worst_case_is_the_minimum_over_attacks_restarts_and_transfer():
    torch.manual_seed(0)
    net = build_arch("edsr", num_feat=8, num_block=1, upscale=2).eval()
    other = build_arch("edsr", num_feat=8, num_block=1, upscale=2).eval()
    lr, hr = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 24, 24)
    one = default_eval_attacks(8 / 255, train_steps=1, restarts=1)
    three = default_eval_attacks(8 / 255, train_steps=1, restarts=3)
    r1 = worst_case_psnr(net, lr, hr, one, crop_border=2)
    r3 = worst_case_psnr(net, lr, hr, three, crop_border=2, transfer_from={"other": other})
    assert "pgd30_clean@other/sr_psnr" in r3 and "ifgsm10_hr/hr_psnr" in r3
    for metric in ("sr_psnr", "hr_psnr"):
        entries = torch.stack([v for k, v in r3.items() if k.endswith(metric) and not k.startswith("worst")])
        assert torch.equal(r3[f"worst/{metric}"], entries.min(dim=0).values)
        # restart 0 of three is the single run of one: more restarts can only lower the kept value
        assert (r3[f"pgd30_clean/{metric}"] <= r1[f"pgd30_clean/{metric}"] + 1e-9).all()
    # a white-box attack moves the output more than one crafted on an unrelated network
    assert r3["pgd30_clean/sr_psnr"].mean() < r3["pgd30_clean@other/sr_psnr"].mean()
    table = markdown_table({"net": {k: float(v.mean()) for k, v in r3.items()} | {"clean/hr_psnr": 20.0}}, 8 / 255)
    assert "| net | sr_psnr |" in table and "| net | hr_psnr | 20.00 |" in table
