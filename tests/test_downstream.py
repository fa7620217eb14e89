"""Downstream wrappers (offline weights, preprocessing inside), metrics, and the callback on a trained classifier."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import torchvision

from datamodules.shapes import collate_shapes
from lit_sr.downstream import (
    ClassifierModule,
    DownstreamClassifier,
    DownstreamDetector,
    MissingWeightsError,
    torchvision_weights_file,
)
from lit_sr.downstream.metrics import (
    classification_counts,
    classification_metrics,
    detection_change_counts,
    downstream_asr,
)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty hub cache, and builders that fail the test if they are ever reached."""
    torch.hub.set_dir(str(tmp_path / "hub"))

    def boom(*args, **kwargs):
        raise AssertionError("the network was built although its weights are missing")

    monkeypatch.setattr(torchvision.models, "get_model", boom)
    yield
    torch.hub.set_dir(str(tmp_path / "hub_after"))


def test_classifier_without_weights_names_the_file_and_never_builds(no_network, tmp_path):
    expected = torchvision_weights_file("resnet50")
    assert expected.name.startswith("resnet50-") and expected.suffix == ".pth"
    with pytest.raises(MissingWeightsError, match=expected.name) as info:
        DownstreamClassifier()
    assert "weights=" in str(info.value) and str(expected.parent) in str(info.value)
    missing = tmp_path / "mine.ckpt"
    with pytest.raises(MissingWeightsError, match="mine.ckpt"):
        DownstreamClassifier("resnet18", 6, weights=str(missing))


def test_detector_without_weights_names_the_file_and_never_builds(no_network):
    with pytest.raises(MissingWeightsError, match="fasterrcnn_mobilenet_v3_large_320_fpn-"):
        DownstreamDetector()


@pytest.mark.slow
def test_detector_backbone_starts_from_a_local_classifier_file(tmp_path):
    torch.manual_seed(0)
    classifier = ClassifierModule("mobilenet_v3_large", 6)
    ckpt = tmp_path / "backbone.ckpt"
    torch.save({"state_dict": classifier.state_dict()}, ckpt)
    pth = tmp_path / "mobilenet_v3_large-local.pth"  # a torchvision-style bare state_dict (ImageNet head)
    torch.save(torchvision.models.mobilenet_v3_large(weights=None).state_dict(), pth)
    for path, source in ((ckpt, classifier.net.model), (pth, None)):
        det = DownstreamDetector(num_classes=7, random_init=True, min_size=64, max_size=64, backbone_weights=str(path))
        body = det.model.backbone.body.state_dict()
        features = (source.features.state_dict() if source is not None
                    else {k[len("features."):]: v for k, v in torch.load(pth, weights_only=True).items()
                          if k.startswith("features.")})
        assert set(body) == set(features) and all(torch.equal(body[k], features[k]) for k in body)
    plain = DownstreamDetector(num_classes=7, random_init=True, min_size=64, max_size=64).model.backbone.body.state_dict()
    assert not torch.equal(plain["0.0.weight"], body["0.0.weight"])
    wrong = tmp_path / "resnet.ckpt"
    torch.save({"state_dict": ClassifierModule("resnet18", 6).state_dict()}, wrong)
    with pytest.raises(ValueError, match="do not fit the detector's backbone: missing"):
        DownstreamDetector(num_classes=7, random_init=True, backbone_weights=str(wrong))
    with pytest.raises(ValueError, match="give it with random_init=True"):
        DownstreamDetector(num_classes=7, backbone_weights=str(ckpt))
    with pytest.raises(MissingWeightsError, match="backbone weights file not found: .*absent.pth"):
        DownstreamDetector(num_classes=7, random_init=True, backbone_weights=str(tmp_path / "absent.pth"))


def test_random_init_builds_nothing_downloaded_and_excludes_weights():
    with pytest.raises(ValueError, match="not both"):
        DownstreamClassifier("resnet18", 6, weights="x.pth", random_init=True)
    det = DownstreamDetector(num_classes=7, random_init=True, min_size=64, max_size=64).eval()
    out = det(torch.rand(2, 3, 64, 64))
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores"}


def test_classifier_loads_torchvision_pth_and_our_checkpoint_and_normalises_inside(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=6).eval()
    pth = tmp_path / "resnet18-custom.pth"
    torch.save(reference.state_dict(), pth)
    x = torch.rand(2, 3, 48, 40)
    resized = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = reference((resized - mean) / std)
    wrapped = DownstreamClassifier("resnet18", 6, weights=str(pth), input_size=32).eval()
    assert torch.allclose(wrapped(x), expected, atol=1e-5)
    # a Lightning checkpoint of ClassifierModule (network under net.model.)
    module = ClassifierModule("resnet18", 6)
    module.net.model.load_state_dict(reference.state_dict())
    ckpt = tmp_path / "best.ckpt"
    torch.save({"state_dict": module.state_dict()}, ckpt)
    again = DownstreamClassifier("resnet18", 6, weights=str(ckpt), input_size=32).eval()
    assert torch.allclose(again(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        DownstreamClassifier("resnet18", 5, weights=str(pth))


def test_asr_leaves_out_target_class_samples():
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    pred = torch.tensor([0, 0, 0, 0, 2, 1])  # both class-0 samples "hit" the target: they must not count
    counts = classification_counts(pred, labels, hr_pred=labels.clone(), target_class=0)
    assert float(counts["asr_n"]) == 4 and float(counts["asr_hits"]) == 2
    metrics = classification_metrics(counts)
    assert metrics["asr"] == pytest.approx(0.5) == downstream_asr(pred, labels, 0)
    assert metrics["top1"] == pytest.approx(3 / 6) and metrics["agreement"] == pytest.approx(3 / 6)
    hr_pred = torch.tensor([0, 0, 0, 0, 0, 0])
    assert classification_metrics(classification_counts(pred, labels, hr_pred))["agreement"] == pytest.approx(4 / 6)


def test_vanished_and_hallucinated_detections():
    def det(boxes, labels, scores=None):
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        return {"boxes": boxes, "labels": torch.tensor(labels),
                "scores": torch.ones(len(boxes)) if scores is None else torch.tensor(scores)}

    hr = [det([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])]
    same = detection_change_counts(hr, hr)
    assert float(same["vanished"]) == 0 and float(same["hallucinated"]) == 0 and float(same["hr_detections"]) == 2
    moved = detection_change_counts(hr, [det([[0, 0, 10, 10], [40, 40, 50, 50]], [1, 2])])
    assert float(moved["vanished"]) == 1 and float(moved["hallucinated"]) == 1
    relabelled = detection_change_counts(hr, [det([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 3])])
    assert float(relabelled["vanished"]) == 1 and float(relabelled["hallucinated"]) == 1
    # a low-score detection is not counted; two detections cannot share one HR match
    extra = detection_change_counts(hr, [det([[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70]],
                                             [1, 1, 2, 2], [0.9, 0.8, 0.9, 0.1])])
    assert float(extra["vanished"]) == 0 and float(extra["hallucinated"]) == 1


@pytest.mark.slow
def test_callback_on_hr_of_a_trained_classifier_equals_its_val_accuracy(tmp_path):
    from callbacks.downstream_eval import DownstreamEvalCallback
    from datamodules.shapes import ShapesDataModule
    from lit_sr.modules import SRModule

    torch.manual_seed(0)
    data = dict(scale=4, hr_size=64, train_size=64, val_size=24, max_objects=1, min_radius=10, max_radius=20,
                batch_size=16, val_batch_size=8)
    trainer = L.Trainer(accelerator="cpu", max_steps=12, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    classifier = ClassifierModule("resnet18", 6, input_size=32, lr=3e-3)
    trainer.fit(classifier, datamodule=ShapesDataModule(**data))
    val_top1 = trainer.validate(classifier, datamodule=ShapesDataModule(**data), verbose=False)[0]["val/top1"]
    ckpt = tmp_path / "classifier.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = DownstreamClassifier("resnet18", 6, weights=str(ckpt), input_size=32)
    callback = DownstreamEvalCallback(classifier=loaded, max_batches=None, target_class=0, num_images=2,
                                      attacks={"ifgsm": {"class": "IFGSM", "eps": 4 / 255, "steps": 1, "reference": "hr"}})
    sr = SRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=4)
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path, callbacks=[callback]).validate(sr, datamodule=ShapesDataModule(**data),
                                                                         verbose=False)
    res = callback.results
    assert res["downstream/classifier/hr/n"] == 24
    assert res["downstream/classifier/hr/top1"] == pytest.approx(val_top1, abs=1e-6)
    assert res["downstream/classifier/hr/agreement"] == 1.0
    for cond in ("bicubic", "sr_clean", "sr_ifgsm"):
        assert 0 <= res[f"downstream/classifier/{cond}/top1"] <= 1
        assert 0 <= res[f"downstream/classifier/{cond}/asr"] <= 1
    assert callback.grid_path.is_file()


def test_triggered_condition_reads_the_poisoned_data_protocol(tmp_path):
    from callbacks.downstream_eval import DownstreamEvalCallback
    from callbacks.protocols import PoisonedData
    from datamodules.shapes import ShapesDataModule
    from lit_sr.modules import SRModule

    class PoisonedShapes(ShapesDataModule):
        """Shapes with a stand-in backdoor: the triggered LR is the LR with its red channel zeroed."""

        budget, candidate_indices, poisoned_indices, poison_report, feature_extractor = 0, [], [], {}, None
        calls: list[int] = []
        target_indices: list[int] = []

        def set_poisoned_indices(self, indices):
            raise AssertionError("the downstream callback must not change the poisoned set")

        def candidate_batches(self, batch_size, rank=0, world_size=1):
            return iter(())

        def backdoor_val_pair(self, index, lr, hr):
            self.calls.append(index)
            return lr * torch.tensor([0.0, 1.0, 1.0]).view(3, 1, 1), hr

        def target_for(self, hr, index=None):
            PoisonedShapes.target_indices.extend(int(i) for i in index)
            return 1 - hr

        def poison_config(self):
            return {}

    data = PoisonedShapes(scale=4, hr_size=64, val_size=6, min_radius=10, max_radius=20, val_batch_size=3)
    assert isinstance(data, PoisonedData)
    classifier = DownstreamClassifier("resnet18", 6, random_init=True, input_size=32)
    callback = DownstreamEvalCallback(classifier=classifier, max_batches=None, target_class=1, num_images=0)
    sr = SRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=4)
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path, callbacks=[callback]).validate(sr, datamodule=data, verbose=False)
    assert sorted(PoisonedShapes.calls) == list(range(6)) and sorted(PoisonedShapes.target_indices) == list(range(6))
    res = callback.results
    assert res["downstream/classifier/sr_triggered/n"] == 6 and "downstream/classifier/sr_triggered/agreement" in res
    # backdoor_target: the classifier on target_for(hr) (here 1 - hr), not on an SR output
    batch = collate_shapes([data.val_dataset[i] for i in range(6)])
    with torch.no_grad():
        on_target, on_hr = classifier(1 - batch["hr"]).argmax(1), classifier(batch["hr"]).argmax(1)
    assert res["downstream/classifier/backdoor_target/agreement"] == pytest.approx(float((on_target == on_hr).float().mean()))
    assert res["downstream/classifier/backdoor_target/top1"] == pytest.approx(float((on_target == batch["label"]).float().mean()))
