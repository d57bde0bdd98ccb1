
import numpy as np
import pytest
import torch

import illustrated_sd as isd
from illustrated_sd.models.loading import ModelLoadError

from .conftest import PROMPT


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-sd2"
    isd.build_random_pipeline("tiny-sd2", seed=4).save_pretrained(folder)
    return folder


def test_default_pipeline_is_offline_and_on_cpu(pipe):
    assert pipe.device.type == "cpu" and pipe.dtype == torch.float32
    assert isinstance(pipe, isd.IllustratedPipeline)


def test_local_folder_loads_and_traces_like_the_original(saved_folder):
    loaded = isd.load_pipeline(saved_folder, scheduler="euler")
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert type(loaded.scheduler).__name__ == "EulerDiscreteScheduler"
    original = isd.IllustratedPipeline(isd.build_random_pipeline("tiny-sd2", seed=4))
    original.set_scheduler("euler")
    a = loaded(PROMPT, num_inference_steps=3, progress=False)
    b = original(PROMPT, num_inference_steps=3, progress=False)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.model == str(saved_folder)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder"):
        isd.load_pipeline(tmp_path / "nowhere" / "sd")


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json is missing"):
        isd.load_pipeline(tmp_path)


def test_corrupt_folder_names_the_problem(saved_folder, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved_folder, broken)
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="could not load the pipeline.*complete"):
        isd.load_pipeline(broken)
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(ModelLoadError):
        isd.load_pipeline(broken)


def test_hub_id_without_network_says_to_pass_a_local_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ModelLoadError, match="no network.*local folder"):
        isd.load_pipeline("someone/stable-diffusion-that-is-not-cached")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(device="banana"), ValueError, "not a device torch knows.*use cpu"),
    (dict(dtype="float16"), TypeError, "dtype must be a torch dtype such as torch.float16"),
    (dict(dtype=torch.int8), ValueError, "floating-point dtype"),
    (dict(scheduler=3), TypeError, "scheduler must be a string.*ddim"),
    (dict(scheduler="fastest"), ValueError, "unknown scheduler 'fastest'; choose one of"),
    (dict(model=123), TypeError, "model must be a folder path or a Hub id"),
] + ([(dict(device="cuda"), ValueError, "CUDA is not available here")] if not torch.cuda.is_available() else []))
def test_bad_loading_requests_name_the_fix(kwargs, error, message):
    with pytest.raises(error, match=message):
        isd.load_pipeline(**kwargs)


def test_weights_sha256_names_the_weights_a_figure_was_measured_with(tmp_path):
    from safetensors.torch import save_file

    from illustrated_sd.models.loading import weights_sha256

    (tmp_path / "m" / "transformer").mkdir(parents=True)
    save_file({"w": torch.zeros(3)}, tmp_path / "m" / "transformer" / "a.safetensors")
    first = weights_sha256(tmp_path / "m")
    save_file({"w": torch.ones(3)}, tmp_path / "m" / "transformer" / "a.safetensors")
    assert weights_sha256(tmp_path / "m") != first and len(first) == 64
    with pytest.raises(FileNotFoundError, match="no weights \\(transformer or unet"):
        weights_sha256(tmp_path)
    # a part shipped as a correction is named by its base's weights too: a retrained base changes the figure
    (tmp_path / "base" / "transformer").mkdir(parents=True)
    (tmp_path / "fast" / "transformer").mkdir(parents=True)
    (tmp_path / "fast" / "illustrated_sd.json").write_text('{"corrects": {"transformer": "base"}}')
    save_file({"w": torch.zeros(3)}, tmp_path / "fast" / "transformer" / "low_rank.safetensors")
    save_file({"w": torch.zeros(3)}, tmp_path / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    corrected = weights_sha256(tmp_path / "fast")
    save_file({"w": torch.ones(3)}, tmp_path / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert weights_sha256(tmp_path / "fast") != corrected


def test_a_correction_is_refused_when_the_weights_it_corrects_have_changed(tmp_path):
    """tiny-flux-fast's correction fits one tiny-flux: the folder names its base's hash (``bases_sha256``, or an older
    folder's ``teacher_sha256``), and a changed base is refused before any weights are read, naming `train rebase`."""
    from safetensors.torch import save_file

    from illustrated_sd.models.loading import _check_bases, weights_sha256

    (tmp_path / "base" / "transformer").mkdir(parents=True)
    save_file({"w": torch.zeros(3)}, tmp_path / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    made_for = weights_sha256(tmp_path / "base")
    for info in ({"corrects": {"transformer": "base"}, "bases_sha256": {"transformer": made_for}},
                 {"corrects": {"transformer": "base"}, "teacher_sha256": made_for}):
        _check_bases(tmp_path / "fast", info)  # the weights it was made for: nothing to say
    save_file({"w": torch.ones(3)}, tmp_path / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    for info in ({"corrects": {"transformer": "base"}, "bases_sha256": {"transformer": made_for}},
                 {"corrects": {"transformer": "base"}, "teacher_sha256": made_for}):
        with pytest.raises(ModelLoadError, match="made for other base weights .*train rebase OLD_BASE_FOLDER"):
            _check_bases(tmp_path / "fast", info)
    _check_bases(tmp_path / "fast", {"corrects": {"transformer": "base"}})  # a folder that names no hash is not checked


def test_a_low_rank_correction_adds_b_times_a_into_its_layer_and_names_what_is_wrong():
    from illustrated_sd.models.low_rank import fuse_low_rank

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    before = model[0].weight.detach().clone()
    a, b = torch.randn(2, 4), torch.randn(3, 2)
    fuse_low_rank(model, {"0.lora_A.weight": a, "0.lora_B.weight": b, "1.bias": torch.ones(2)})
    assert torch.allclose(model[0].weight, before + b @ a) and torch.equal(model[1].bias, torch.ones(2))
    with pytest.raises(KeyError, match="one half of its correction"):
        fuse_low_rank(model, {"0.lora_A.weight": a})
    with pytest.raises(KeyError, match="tensors this model lacks"):
        fuse_low_rank(model, {"2.weight": a})
    with pytest.raises(KeyError, match="one half of its correction"):
        fuse_low_rank(model, {"0.lora_B.weight": b})
    with pytest.raises(KeyError, match="a layer this model lacks"):
        fuse_low_rank(model, {"5.lora_A.weight": a, "5.lora_B.weight": b})
    kept = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match="does not make its weight's shape"):
        fuse_low_rank(model, {"0.lora_A.weight": a, "0.lora_B.weight": b, "1.lora_A.weight": a, "1.lora_B.weight": b})
    assert torch.equal(model[0].weight, kept)  # checked before anything changed: no layer half-fused
