"""Nothing runs, leaks or is overwritten that the user did not ask for (issue 24; docs/trust.md).

Each test reproduces one finding of the hostile-user review: a checkpoint URL that runs code, a run
that overwrites the user's files, an image bomb, an orphaned study child, stale study results, wrong
messages, a NaN run that looks finished, a cache that reads outside itself, stale DDP tokens.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import threading
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- 1. checkpoints never run code
class _Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): the proof that a file's code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_checkpoint(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": {"payload": _Payload(marker)}, "hyper_parameters": {}}, buffer)
    return buffer.getvalue()


@contextlib.contextmanager
def serving(payload: bytes):
    """An HTTP server on 127.0.0.1 (ephemeral port, one thread) answering every GET with ``payload``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 5

        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_HEAD(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/evil.ckpt"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def tiny_fit_args(tmp_path: Path) -> list[str]:
    """The quickstart recipe cut to one 2-step epoch of a tiny net on small images, output in ``tmp_path``."""
    return ["--config", str(ROOT / "configs" / "train" / "quickstart.yaml"),
            "--model.init_args.arch_kwargs", "{num_feat: 8, num_block: 1}",
            "--data.init_args.patch_size", "32", "--data.init_args.batch_size", "2",
            "--data.init_args.repeat", "1", "--data.init_args.max_side", "96",
            "--data.init_args.max_val_images", "1",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]


@pytest.mark.parametrize("subcommand", ["fit", "validate", "predict"])
def test_a_checkpoint_url_is_read_safely_and_its_code_never_runs(subcommand, tmp_path, monkeypatch):
    from lit_sr.io import UnsafeCheckpointError
    from train import main

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    with serving(evil_checkpoint(marker)) as url:
        with pytest.raises(UnsafeCheckpointError, match="refused as unsafe") as info:
            main([subcommand, *tiny_fit_args(tmp_path), "--ckpt_path", url])
    assert not marker.exists()
    assert url in str(info.value) and "weights_only=False" not in str(info.value)


def test_the_trainer_reads_every_checkpoint_path_through_the_safe_loader(tmp_path):
    """Past the CLI: a Trainer given a URL (``ckpt_path`` set after parsing) still reads it safely."""
    import lightning as L

    from lit_sr.checkpoint_io import SafeCheckpointIO, install_safe_checkpoint_io
    from lit_sr.io import UnsafeCheckpointError

    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        default_root_dir=tmp_path)
    install_safe_checkpoint_io(trainer)
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
    marker = tmp_path / "pwned"
    with serving(evil_checkpoint(marker)) as url:
        with pytest.raises(UnsafeCheckpointError, match="refused as unsafe"):
            trainer.strategy.load_checkpoint(url)
        with pytest.raises(ValueError, match="weights_only=False"):
            trainer.strategy.load_checkpoint(url, weights_only=False)
    assert not marker.exists()


def test_weights_only_false_on_the_command_line_is_refused(tmp_path, monkeypatch):
    from lit_sr.checkpoint_io import UnsafeCheckpointSettingError
    from train import main

    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(UnsafeCheckpointSettingError, match="weights_only false"):
        main(["validate", *tiny_fit_args(tmp_path), "--ckpt_path", str(ckpt), "--weights_only", "false"])


def test_local_and_truncated_checkpoints_are_refused_naming_the_file(tmp_path, monkeypatch):
    from lit_sr.io import UnsafeCheckpointError, WeightsReadError
    from train import main

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(evil_checkpoint(marker))
    with pytest.raises(UnsafeCheckpointError, match=r"refused as unsafe: .*evil\.ckpt") as info:
        main(["fit", *tiny_fit_args(tmp_path), "--ckpt_path", str(evil)])
    assert "weights_only=False" not in str(info.value) and not marker.exists()
    good = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}, "hyper_parameters": {}}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(WeightsReadError, match=r"refused as corrupt: .*cut\.ckpt"):
        main(["fit", *tiny_fit_args(tmp_path), "--ckpt_path", str(cut)])


def test_lpips_and_vgg_weights_are_refused_naming_the_file(tmp_path):
    from lit_sr.archs.ttsr_arch import LTE
    from lit_sr.io import UnsafeCheckpointError
    from lit_sr.losses import _build_vgg_layers, _load_torchvision_vgg, vgg_layer_names
    from lit_sr.metrics import build_lpips

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil_backbone.pth"
    evil.write_bytes(evil_checkpoint(marker))
    with pytest.raises(UnsafeCheckpointError, match=r"refused as unsafe: .*evil_backbone\.pth"):
        build_lpips("alex", backbone_path=evil)
    with pytest.raises(UnsafeCheckpointError, match=r"refused as unsafe: .*evil_backbone\.pth"):
        _load_torchvision_vgg(_build_vgg_layers(vgg_layer_names("vgg19")), "vgg19", evil)
    with pytest.raises(UnsafeCheckpointError, match=r"refused as unsafe: .*evil_backbone\.pth"):
        LTE(vgg_weights=None).load_vgg19(evil)
    assert not marker.exists()


# --------------------------------------------------------------------------- 2. the user's files are never overwritten
@pytest.fixture
def argv_of_train(monkeypatch):
    """``sys.argv`` as ``python train.py`` would have it (LightningCLI warns when pytest's arguments are there)."""
    import sys

    monkeypatch.setattr(sys, "argv", ["train.py"])


NO_LOGGER = ["--trainer.logger", "false", "--trainer.callbacks",  # LearningRateMonitor needs a logger
             "[{class_path: callbacks.last_checkpoint.LastCheckpoint}, {class_path: callbacks.RunSummary}]"]


@pytest.mark.parametrize("users_file", ["config.yaml", "weights.pth"])
def test_a_run_without_logger_never_overwrites_the_users_files(users_file, tmp_path, monkeypatch, argv_of_train):
    from lit_sr.run_folder import RunFolderClashError
    from train import main

    monkeypatch.chdir(tmp_path)
    mine = {"config.yaml": b"my own config\n", "weights.pth": b"my own weights"}
    for name, content in mine.items():
        if name == users_file:
            (tmp_path / name).write_bytes(content)
    with pytest.raises(RunFolderClashError, match=f"would overwrite {tmp_path / users_file}"):
        main(["fit", *tiny_fit_args(tmp_path), *NO_LOGGER])
    assert (tmp_path / users_file).read_bytes() == mine[users_file]
    # nothing was written before the refusal: no config.yaml beside the user's weights, no checkpoints
    assert sorted(p.name for p in tmp_path.iterdir()) == [users_file]


def test_a_run_without_logger_in_an_empty_folder_writes_its_artefacts_there(tmp_path, monkeypatch, argv_of_train):
    from train import main

    monkeypatch.chdir(tmp_path)
    main(["fit", *tiny_fit_args(tmp_path), *NO_LOGGER])
    for name in ("config.yaml", "weights.pth", "summary.json", "checkpoints/last.ckpt"):
        assert (tmp_path / name).is_file(), name


# --------------------------------------------------------------------------- 3. image bombs, long inference
def bomb_png(path: Path, width: int = 12000, height: int = 12000) -> Path:
    """A PNG whose header claims ``width x height`` pixels (12000^2 lies between PIL's limit and twice it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("reader", ["read_image", "read_pixels"])
def test_an_image_above_the_pixel_limit_is_refused_from_its_header(reader, tmp_path):
    from PIL import Image

    from lit_sr.data.images import read_pixels
    from lit_sr.io import ImageReadError, read_image

    assert Image.MAX_IMAGE_PIXELS < 12000 * 12000 < 2 * Image.MAX_IMAGE_PIXELS  # PIL itself only warns
    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 1000
    with pytest.raises(ImageReadError) as info:
        {"read_image": read_image, "read_pixels": read_pixels}[reader](bomb)
    message = str(info.value)
    assert str(bomb) in message and "12000x12000" in message
    assert f"MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}" in message and "raise the limit deliberately" in message


class _SignalAtBatch:
    """Sends ``signum`` to this process at the end of predict batch ``at`` (what ``kill`` would do)."""

    def __init__(self, signum: int, at: int):
        self.signum, self.at = signum, at

    def callback(self):
        import os

        import lightning as L

        signum, at = self.signum, self.at

        class Sender(L.Callback):
            def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
                if batch_idx == at:
                    os.kill(os.getpid(), signum)

        return Sender()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_predict_stops_on_sigterm_and_sigint(signame, tmp_path, monkeypatch, argv_of_train):
    import signal

    from lit_sr.io import write_image
    from train import main

    monkeypatch.chdir(tmp_path)
    lr_dir = tmp_path / "lr"
    for i in range(12):
        write_image(torch.rand(3, 8, 8), lr_dir / f"im{i:02d}.png")
    out = tmp_path / "out"
    cli = main([*tiny_fit_args(tmp_path), "--trainer.logger", "false", "--trainer.callbacks", "[]",
                "--data.init_args.predict_path", str(lr_dir), "--prediction.output_dir", str(out)], run=False)
    cli.trainer.callbacks.append(_SignalAtBatch(getattr(signal, signame), at=3).callback())
    # Python's own SIGINT handler (KeyboardInterrupt), as in a terminal: a suite started in the background
    # by a shell without job control inherits SIGINT ignored, and the signal would then never arrive
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit):
            cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    written = sorted(p.name for p in out.glob("*.png"))
    assert 1 <= len(written) < 12, written  # stopped early, after whole files


# --------------------------------------------------------------------------- 4. a study's children die with it
# A stand-in for train.py: says its pid, then sleeps far longer than the test waits.
SLEEPER = "import os, sys, time, pathlib\npathlib.Path(sys.argv[-1]).parent.joinpath('child.pid').write_text(str(os.getpid()))\ntime.sleep(120)\n"


def sleeper_study(tmp_path: Path) -> Path:
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    (tmp_path / "base.yaml").write_text("seed_everything: 0\n")
    path = tmp_path / "study_sleep.yaml"
    path.write_text(f"name: sleep\noutput_dir: {tmp_path / 'out'}\nbase_config: {tmp_path / 'base.yaml'}\n"
                    f"train_script: {tmp_path / 'sleeper.py'}\nruns: {{A: {{}}}}\n"
                    "columns: [{header: x, path: x, format: float}]\n")
    return path


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_for(predicate, timeout: float) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _start_study(path: Path):
    import os
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "lit_sr", "study", "--config", str(path)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="parent-death signal: Linux only")
def test_killing_a_study_kills_its_training_run(tmp_path):
    import os
    import signal

    path = sleeper_study(tmp_path)
    pid_file = tmp_path / "out" / "sleep" / "runs" / "A" / "child.pid"
    study = _start_study(path)
    child = None
    try:
        assert _wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 60), study.communicate(timeout=5)[0]
        child = int(pid_file.read_text())
        assert _alive(child)
        os.kill(study.pid, signal.SIGKILL)
        study.wait(timeout=10)
        assert _wait_for(lambda: not _alive(child), 5), "the training child outlived the killed study"
    finally:
        if study.poll() is None:
            study.kill()
            study.wait(timeout=10)
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_second_runner_on_a_locked_run_folder_is_refused(tmp_path):
    from lit_sr.jobs.study.runner import load_study, run_study
    from lit_sr.run_folder import RunFolderLock

    study = load_study(sleeper_study(tmp_path))
    folder = study.runs_dir / "A"
    folder.mkdir(parents=True)
    (folder / "train.log").write_text("written by the run that owns this folder\n")
    with RunFolderLock(folder):
        metas = run_study(study)
    assert metas[0]["status"] == "locked" and f"run folder {folder} is in use" in metas[0]["error"]
    assert (folder / "train.log").read_text() == "written by the run that owns this folder\n"  # untouched


# --------------------------------------------------------------------------- 5. a study hashes what a run reads
def test_a_study_reruns_a_run_whose_config_contents_or_weights_changed(tmp_path, capsys):
    from test_study import COLUMNS, write_study

    from lit_sr.jobs.study.cli import main

    weights = tmp_path / "substitute.pth"
    weights.write_bytes(b"weights of the first substitute")
    path = write_study(tmp_path, f"runs: {{A: {{overrides: {{fake.clean_weights: {weights}}}}}}}\n",
                       COLUMNS.replace("format: paired_delta", "format: float"))
    calls = tmp_path / "out" / "fake" / "calls.txt"
    assert main(["--config", str(path)]) == 0 and len(calls.read_text().split()) == 1
    assert main(["--config", str(path)]) == 0 and len(calls.read_text().split()) == 1  # unchanged: not rerun
    base = tmp_path / "base.yaml"
    base.write_text(base.read_text().replace("psnr: 30.0", "psnr: 25.0"))  # same file name, new contents
    capsys.readouterr()
    assert main(["--config", str(path)]) == 0 and len(calls.read_text().split()) == 2
    assert f"A: rerun, changed since its last run: {base.resolve()}" in capsys.readouterr().out
    weights.write_bytes(b"weights of a retrained substitute")  # the path it names is the same
    assert main(["--config", str(path)]) == 0 and len(calls.read_text().split()) == 3
    assert f"changed since its last run: {weights.resolve()}" in capsys.readouterr().out


def test_input_digests_follow_nested_configs_and_skip_the_runs_own_folder(tmp_path):
    from lit_sr.jobs.study.inputs import MISSING, file_digest, input_digests

    (tmp_path / "w.safetensors").write_bytes(b"w")
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "weights.pth").write_bytes(b"output")
    (tmp_path / "model.yaml").write_text("init_args: {weights: w.safetensors}\n")  # relative to its config
    (tmp_path / "base.yaml").write_text(f"model: {tmp_path / 'model.yaml'}\nlr: 0.1\n")
    digests = input_digests([tmp_path / "base.yaml", tmp_path / "gone.yaml"],
                            {"a": [str(tmp_path / "own" / "weights.pth"), "not a file"]}, exclude=[tmp_path / "own"])
    assert digests == {str(tmp_path / n): file_digest(tmp_path / n) for n in ("base.yaml", "model.yaml", "w.safetensors")} | {
        str(tmp_path / "gone.yaml"): MISSING}


# --------------------------------------------------------------------------- 6. every bad value named
@pytest.mark.parametrize("key, value, message", [
    ("steps", "-5", r"trigger.steps must be in \[1, inf\]; got -5"),
    ("lr", "-1", r"trigger.lr must be in \(0.0, inf\]; got -1.0"),
    ("eps", "2", r"trigger.eps must be in \(0.0, 1.0\]; got 2.0")])
def test_a_bad_trigger_setting_on_the_command_line_names_itself(key, value, message, tmp_path, monkeypatch):
    """Not jsonargparse's "AdversarialTriggerSpec does not correspond to a subclass of Trigger"."""
    from train import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message) as info:
        main(["--config", str(ROOT / "configs" / "train" / "badsr_quickstart.yaml"),
              f"--data.init_args.trigger.init_args.{key}", value], run=False)
    assert "does not correspond to a subclass" not in str(info.value).split("\n")[0]


def _real_write_error(save_file, limit: int = 1024):
    """``save_file`` under a 1 KiB file-size limit: safetensors' own error for a failed write (EFBIG)."""
    import resource
    import signal

    def limited(*args, **kwargs):
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            return save_file(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, previous)

    return limited


def _disk_full(*args, **kwargs):
    """What safetensors raises on a full disk (its Rust io::Error, worded as it words it)."""
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("fault", ["file size limit", "disk full"])
def test_a_failed_safetensors_write_names_the_cache_file(fault, tmp_path, monkeypatch):
    import errno
    import re

    import safetensors.torch
    from test_poison_cache import make_dm

    broken = _real_write_error(safetensors.torch.save_file) if fault == "file size limit" else _disk_full
    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError) as info:
        make_dm(tmp_path).setup("fit")
    message = str(info.value)
    assert re.search(r"cache/[0-9a-f]{16}/(train|val)_\d{6}\.safetensors", message), message
    if fault == "disk full":
        assert info.value.errno == errno.ENOSPC and "the disk is full" in message
    else:
        assert info.value.errno == errno.EFBIG
    assert not list((tmp_path / "cache").rglob(".*.safetensors"))  # no half-written temporary file left


def test_a_truncated_manifest_is_named_and_rebuild_cache_rebuilds_it(tmp_path):
    from test_poison_cache import make_dm

    from lit_sr.poison.cache import CacheMismatchError

    first = make_dm(tmp_path)
    first.setup("fit")
    manifest = first.cache.manifest_path
    manifest.write_text(manifest.read_text()[:100])  # cut short, as a full disk or a kill during a copy leaves it
    with pytest.raises(CacheMismatchError, match=rf"{manifest} is not valid JSON .*rebuild_cache: true"):
        make_dm(tmp_path).setup("fit")
    again = make_dm(tmp_path, rebuild_cache=True)
    again.setup("fit")  # what the message advises now works
    assert again.generated_samples > 0 and again.cache.read_manifest()["samples"]
    i = again.candidate_indices[0]
    torch.testing.assert_close(again.poisoned_pair(i)[0], first.poisoned_pair(i)[0])


# --------------------------------------------------------------------------- 8. the cache reads only its own files
def _plant_outside_sample(tmp_path: Path, dm, key: str) -> tuple[Path, dict]:
    """A sample file outside the cache (every pixel 1) whose SHA-256 an edited manifest would record."""
    from safetensors.torch import save_file

    from lit_sr.poison.cache import sha256_file

    shapes = dm.cache.shapes(key)
    outside = tmp_path / "outside" / "x.safetensors"
    outside.parent.mkdir()
    save_file({name: torch.full(shape, 255, dtype=torch.uint8) for name, shape in shapes.items()}, str(outside))
    return outside, {"sha256": sha256_file(outside)}


@pytest.mark.parametrize("how", ["manifest path", "symlink"])
def test_the_cache_never_reads_a_file_outside_its_folder(how, tmp_path):
    import json
    import os

    from test_poison_cache import make_dm

    from lit_sr.poison.cache import CacheMismatchError, PoisonCache

    first = make_dm(tmp_path)
    first.setup("fit")
    i = first.candidate_indices[0]
    key = next(k for k in first.cache.entries if k.startswith("train_") and int(k.split("_")[1]) == i)
    clean = first.poisoned_pair(i)[0].clone()
    outside, fields = _plant_outside_sample(tmp_path, first, key)
    manifest = json.loads(first.cache.manifest_path.read_text())
    entry = manifest["samples"][key]
    if how == "manifest path":
        fields["file"] = os.path.relpath(outside, first.cache.directory)  # "../../outside/x.safetensors"
        expected = rf"entry '{key}' of .*manifest.json names the file '\.\./\.\./outside/x\.safetensors'"
    else:
        sample = first.cache.directory / entry["file"]
        sample.unlink()
        sample.symlink_to(outside)
        expected = rf"entry '{key}' of .*manifest.json: .*{key}.safetensors is a symbolic link to {outside}"
    entry.update(fields)
    first.cache.manifest_path.write_text(json.dumps(manifest))

    cache = PoisonCache(first.cache.directory, first.cache.config)
    cache.load()
    for read in (cache.read, cache.shapes, lambda k: cache.verify([k])):
        with pytest.raises(CacheMismatchError, match=expected):
            read(key)
    reader = make_dm(tmp_path)
    with pytest.warns(RuntimeWarning, match=expected):  # the writer makes that sample again, inside
        reader.setup("fit")
    torch.testing.assert_close(reader.poisoned_pair(i)[0], clean)  # not the planted all-white image
    assert not (first.cache.directory / entry["file"]).is_symlink()


def test_a_prepared_folder_never_reads_a_file_outside_it(tmp_path):
    import json
    import shutil

    from test_data_prepare import make_folder

    from lit_sr.data import PreparedDataMismatchError, prepare_subimages, read_prepared

    make_folder(tmp_path / "hr", [(64, 64)])
    out = tmp_path / "out"
    prepare_subimages(tmp_path / "hr", out, scale=2, crop_size=32, step=32, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    sub = manifest["images"][0]["sub_images"][0]
    shutil.copy(out / sub["hr"], tmp_path / "elsewhere.png")  # same bytes, so only the path can give it away
    sub["hr"] = "../elsewhere.png"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PreparedDataMismatchError, match=rf"sub-image '{sub['name']}' of .*manifest.json: its hr "
                       r"file '\.\./elsewhere\.png' leads to .*elsewhere\.png, outside"):
        read_prepared(out, verify=True)


def test_a_cached_substitute_of_another_shape_is_named(tmp_path):
    import json

    from test_poison_cache import BADSR, make_dm

    from lit_sr.io import WeightsMismatchError
    from lit_sr.poison.substitute import SubstituteSpec, save_substitute

    dm = make_dm(tmp_path, **BADSR)
    dm.setup("fit")
    folder = dm.cache.directory
    wider = SubstituteSpec("edsr", {"num_feat": 16, "num_block": 1}, train_steps=1).build(dm.scale, seed=0)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["extra"]["substitute_sha256"] = save_substitute(wider, folder / "substitute.safetensors")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsMismatchError, match=r"weights in .*substitute\.safetensors do not fit EDSR: .*"
                       r"file \(16, 3, 3, 3\) vs network \(8, 3, 3, 3\).*delete the file"):
        make_dm(tmp_path, **BADSR).setup("fit")


@pytest.mark.parametrize("patch_size", [0, -8])
def test_a_non_positive_patch_size_is_refused_when_the_data_module_is_built(patch_size):
    from datamodules import EmbeddedPhotosDataModule

    with pytest.raises(ValueError, match=rf"patch_size must be a positive multiple of the scale 2; got {patch_size}"):
        EmbeddedPhotosDataModule(scale=2, patch_size=patch_size)


@pytest.mark.parametrize("norm, eps, refused", [("pixel", 2.0, True), ("rms", 1.5, True), ("l2", 2.0, False)])
def test_a_poisoned_hr_budget_above_the_pixel_scale_is_refused(norm, eps, refused, tmp_path):
    from test_poison_cache import make_dm

    if refused:
        with pytest.raises(ValueError, match=rf"eps must be in \(0, 1\] on the \[0, 1\] pixel scale .*got {eps}"):
            make_dm(tmp_path, eps=eps, poisoned_hr_norm=norm)
    else:  # a raw L2 radius grows with the image: any positive value is meaningful
        assert make_dm(tmp_path, eps=eps, poisoned_hr_norm=norm).eps == eps


def test_a_model_scale_other_than_the_datas_is_refused_before_any_work(tmp_path, monkeypatch):
    from train import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"SRModule upscales x2 but the data module EmbeddedPhotosDataModule serves x4 "
                                         r"pairs: set model.init_args.scale 4 or data.init_args.scale 2"):
        main([*tiny_fit_args(tmp_path), "--model.init_args.scale", "2"], run=False)


def test_the_module_checks_the_scale_too_when_driven_from_python(tmp_path):
    import lightning as L

    from datamodules import EmbeddedPhotosDataModule
    from lit_sr.modules import SRModule

    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False, max_steps=1,
                        default_root_dir=tmp_path)
    data = EmbeddedPhotosDataModule(scale=4, patch_size=32, batch_size=2, max_side=96, max_val_images=1, num_workers=0)
    model = SRModule(arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2)
    with pytest.raises(ValueError, match=r"SRModule upscales x2 but the data module .* serves x4 pairs"):
        trainer.fit(model, datamodule=data)


@pytest.mark.parametrize("value", [".nan", ".inf", "-1.0e-4"])
def test_a_learning_rate_from_a_yaml_file_is_checked_like_the_command_line(value, tmp_path, monkeypatch):
    from train import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lr.yaml").write_text(f"model:\n  init_args:\n    lr: {value}\n")
    with pytest.raises(ValueError, match=r"lr must be (finite|in \(0, inf\]); got"):
        main([*tiny_fit_args(tmp_path), "--config", str(tmp_path / "lr.yaml")], run=False)


# --------------------------------------------------------------------------- 7. a diverged run fails, exports nothing
def test_a_run_whose_loss_turns_nan_stops_with_a_message_and_exports_nothing(tmp_path, monkeypatch):
    from callbacks import NonFiniteLossError
    from train import main

    monkeypatch.chdir(tmp_path)
    args = [arg if arg != "2" or prev != "--trainer.limit_train_batches" else "6"
            for prev, arg in zip(["", *tiny_fit_args(tmp_path)], tiny_fit_args(tmp_path))]
    with pytest.raises(NonFiniteLossError, match=r"training stopped at step \d+ \(epoch 0, batch \d\): loss = "
                                                 r"(nan|inf) is not finite. The run diverged \(model.init_args.lr is "
                                                 r"1e\+09\).*No weights were exported"):
        main(["fit", *args, "--model.init_args.lr", "1e9"])
    assert not list((tmp_path / "runs").rglob("weights*.pth"))
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_the_divergence_check_finds_every_non_finite_loss_shape_and_dtype(dtype):
    from lit_sr.training.stop_on_nonfinite import _finite

    for bad in (float("nan"), float("inf"), -float("inf")):
        for value in (torch.tensor(bad), torch.tensor([bad]), torch.tensor([0.5, bad, 1.0])):
            assert not _finite(value.to(dtype)), (bad, value.shape, dtype)
    for value in (torch.tensor(0.25), torch.tensor([1e4]), torch.tensor([0.5, 2.0]), torch.zeros(0)):
        assert _finite(value.to(dtype))
    assert _finite(torch.tensor(3)) and _finite(torch.tensor([1, 2]))  # integer counts are always finite


def test_nan_weights_are_never_written(tmp_path):
    from torch import nn

    from lit_sr.io import NonFiniteWeightsError, save_weights

    net = nn.Conv2d(3, 3, 3)
    with torch.no_grad():
        net.weight[0, 0, 0, 0] = float("nan")
    for name in ("weights.pth", "weights.safetensors"):
        with pytest.raises(NonFiniteWeightsError, match=rf"refused to write .*{name}: params tensor weight holds NaN"):
            save_weights(net, tmp_path / name)
        assert not (tmp_path / name).exists()


# --------------------------------------------------------------------------- 9. DDP: no stale tokens, true summaries
# Two gloo ranks find their folder group, then crash (os._exit, as kill -9: no cleanup) before the
# end of generation, where the tokens used to be removed.
GROUP_THEN_CRASH = """
import datetime, os, sys
import torch.distributed as dist
from lit_sr.poison import sharding
rank, port, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=60))
group, folder = sharding.folder_group(root)
assert group.members == (0, 1), group
dist.barrier()
os._exit(17)
"""


@pytest.mark.slow
def test_a_rank_crash_after_grouping_leaves_no_peer_tokens(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from test_poison_sharding import free_port

    root = tmp_path / ".peers"
    stale, live = root / ("0" * 32), root / ("f" * 32)  # left by a crash an hour ago; another run's, just now
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "rank00001").write_text("1")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", GROUP_THEN_CRASH, str(r), str(port), str(root)], env=env,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 17, err[-3000:]
    assert sorted(p.name for p in root.iterdir()) == [live.name]  # this run's tokens and the stale folder gone


def test_the_summary_says_a_configured_selection_has_not_run_yet(tmp_path):
    from test_backdoor_callbacks import GradientScorer, PoisonSelectionCallback, ValData, _fit

    from callbacks import BackdoorEvalCallback, BackdoorSummary

    sel = PoisonSelectionCallback(scorer=GradientScorer(batch_size=6, sketch_dim=16), every_n_epochs=5,
                                  save_plot=False)
    summary = BackdoorSummary()
    _fit(tmp_path, [sel, BackdoorEvalCallback(num_grid_images=0), summary], max_epochs=1, data=ValData())
    assert sel.selection_results.last is None  # it had not reached epoch 5
    table = summary.table()
    assert "selection: none ran yet (the selection callback is configured" in table
    assert "no PoisonSelectionCallback" not in table
