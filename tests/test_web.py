"""illustrated_sd.web: the embedded model exported to ONNX runs in onnxruntime as it runs in PyTorch."""

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import illustrated_sd as isd
from illustrated_sd.loops.text import encode_prompts, tokenize_prompt
from illustrated_sd.web import export_onnx
from illustrated_sd.web.onnx_export import FILES, TOLERANCE, export_processors

PROMPT = "a red circle on the left"


@pytest.fixture(scope="module")
def exported(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("web")
    return folder, export_onnx(pipe, folder)


def session(folder, name):
    return onnxruntime.InferenceSession(str(folder / FILES[name]), providers=["CPUExecutionProvider"])


def test_export_writes_three_graphs_and_a_manifest_that_describes_them(pipe, exported):
    folder, info = exported
    assert json.loads((folder / "models.json").read_text()) == info
    for name, file in FILES.items():
        graph = session(folder, name)
        entry = info["files"][name]
        assert entry["file"] == file and entry["bytes"] == (folder / file).stat().st_size
        assert [i.name for i in graph.get_inputs()] == [i["name"] for i in entry["inputs"]]
        assert [o.name for o in graph.get_outputs()] == [o["name"] for o in entry["outputs"]]
        # weights in float16, inputs and outputs in float32 (the token ids in int64)
        assert {w.data_type for w in onnx.load(str(folder / file)).graph.initializer if len(w.dims) and np.prod(w.dims) >= 16} \
            == {onnx.TensorProto.FLOAT16}
        for precision, bounds in TOLERANCE.items():
            checked = entry["check"][precision] if precision == "float32" else entry["check"][precision]["vs_pytorch"]
            assert all(d <= max(bounds.values()) for d in checked.values())
    unet = info["files"]["unet"]
    assert unet["inputs"][1] == {"name": "timestep", "dtype": "float32", "shape": []}
    assert unet["inputs"][0]["shape"] == ["batch", 4, "height", "width"]
    assert [layer["layer"] for layer in info["attention_layers"]] == pipe.cross_attention_layers
    assert [o["name"] for o in unet["outputs"][1:]] == [layer["output"] for layer in info["attention_layers"]]
    assert np.allclose(info["scheduler"]["alphas_cumprod"], pipe.scheduler.alphas_cumprod.numpy())
    assert info["scheduler"]["config"]["prediction_type"] == pipe.scheduler.config.prediction_type
    assert info["vae_scaling_factor"] == pipe.vae.config.scaling_factor


@pytest.mark.parametrize("batch", [1, 2])
def test_text_encoder_gives_the_vectors_the_pipeline_hands_the_unet(pipe, exported, batch):
    folder, _ = exported
    prompts = [PROMPT, "a blue square"][:batch]
    ids = torch.cat([tokenize_prompt(pipe.tokenizer, p).input_ids for p in prompts])
    got = session(folder, "text_encoder").run(None, {"input_ids": ids.numpy()})[0]
    want = torch.cat([e.embeddings for e in encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts, None, False, "cpu")])
    assert got.shape == (batch, 77, 128)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def hand_attention(pipe, sample, t, context) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PyTorch's UNet output and, for each cross-attention layer, softmax(QKᵀ/√d) averaged over the heads, by hand."""
    maps, handles = {}, []
    for name, attn in isd.recording.attention_layers.attention_layers(pipe.unet)["cross"].items():
        def keep(module, args, kwargs, output, name=name):
            q = module.to_q(args[0]).unflatten(-1, (module.heads, -1)).transpose(1, 2)  # [B, heads, pixels, d]
            k = module.to_k(kwargs["encoder_hidden_states"]).unflatten(-1, (module.heads, -1)).transpose(1, 2)
            maps[name] = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1).mean(1)
        handles.append(attn.register_forward_hook(keep, with_kwargs=True))
    try:
        with torch.no_grad():
            noise = pipe.unet(sample, t, encoder_hidden_states=context).sample
    finally:
        for handle in handles:
            handle.remove()
    return noise, maps


@pytest.mark.parametrize("batch", [1, 2])
def test_unet_gives_pytorchs_noise_and_attention_maps(pipe, exported, batch):
    folder, info = exported
    generator = torch.Generator().manual_seed(batch)
    sample, context = torch.randn(batch, 4, 16, 16, generator=generator), torch.randn(batch, 77, 128, generator=generator)
    t = torch.tensor(601.0)
    outputs = session(folder, "unet").run(None, {"sample": sample.numpy(), "timestep": t.numpy(),
                                                  "encoder_hidden_states": context.numpy()})
    noise, maps = hand_attention(pipe, sample, t, context)
    np.testing.assert_allclose(outputs[0], noise.numpy(), atol=1e-4)
    for layer, got in zip(info["attention_layers"], outputs[1:]):
        h, w = layer["grid_at_default_size"]
        assert got.shape == (batch, h * w, 77)
        np.testing.assert_allclose(got.sum(-1), 1, atol=1e-5)
        np.testing.assert_allclose(got, maps[layer["layer"]].numpy(), atol=1e-5)


def test_unet_takes_other_latent_sizes(pipe, exported):
    folder, _ = exported
    sample, context, t = torch.randn(2, 4, 8, 12), torch.randn(2, 77, 128), torch.tensor(21.0)
    outputs = session(folder, "unet").run(None, {"sample": sample.numpy(), "timestep": t.numpy(), "encoder_hidden_states": context.numpy()})
    with torch.no_grad():
        want = pipe.unet(sample, t, encoder_hidden_states=context).sample
    np.testing.assert_allclose(outputs[0], want.numpy(), atol=1e-4)
    assert outputs[1].shape == (2, 8 * 12, 77)


@pytest.mark.parametrize("batch", [1, 2])
def test_vae_decoder_draws_pipe_decode_latents_picture(pipe, exported, batch):
    folder, _ = exported
    latents = torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    image = session(folder, "vae_decoder").run(None, {"latents": latents.numpy()})[0]  # [B, 3, 128, 128] in [-1, 1]
    assert image.shape == (batch, 3, 128, 128)
    grey = np.round((image + 1) * 127.5).transpose(0, 2, 3, 1)
    want = np.stack([np.asarray(p, dtype=np.float64) for p in pipe.decode_latents(latents)])
    assert np.abs(grey - want).max() <= 1  # at most one grey level, from rounding


def test_float16_weights_halve_the_files_and_move_the_picture_by_less_than_a_grey_level(tmp_path):
    # the embedded model's weights are float16 already (so rounding changes nothing there): a float32 random model
    sd2 = isd.IllustratedPipeline(isd.build_random_pipeline("tiny-sd2", seed=1))
    half = export_onnx(sd2, tmp_path / "half")
    full = export_onnx(sd2, tmp_path / "full", float16=False, check=False)
    for name in FILES:
        assert half["files"][name]["bytes"] < 0.6 * full["files"][name]["bytes"]
    change = half["files"]["unet"]["check"]["float16"]["vs_float32"]["noise_pred"]
    assert 0 < change < TOLERANCE["float16"]["noise_pred"]  # rounded weights, and still the same network
    assert 0 < half["files"]["vae_decoder"]["check"]["float16"]["vs_float32"]["image"] < 1
    assert half["float16_image_change_over_one_grey_level"] is False and full["files"]["unet"]["check"] is None


def test_the_unets_processors_come_back_after_an_export_and_after_an_error(pipe, exported):
    before = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
    with pytest.raises(RuntimeError, match="boom"):
        with export_processors(pipe.unet):
            raise RuntimeError("boom")
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == before
    assert "ExportCrossAttention" not in {t.__name__ for t in before.values()}


@pytest.mark.parametrize("layout, family", [("tiny-sdxl", "SDXL"), ("tiny-flux", "flux")])
def test_sdxl_and_flow_models_are_refused_naming_what_works(tmp_path, layout, family):
    other = isd.IllustratedPipeline(isd.build_random_pipeline(layout))
    with pytest.raises(ValueError, match=f"exports SD 1/2 pipelines.*{family}") as error:
        export_onnx(other, tmp_path)
    assert "\n" not in str(error.value) and not list(tmp_path.iterdir())


def test_a_file_or_a_folder_of_other_files_is_refused(pipe, tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        export_onnx(pipe, tmp_path / "file")
    (tmp_path / "unet.onnx").write_text("someone else's")
    with pytest.raises(ValueError, match="not written by export_onnx"):
        export_onnx(pipe, tmp_path)
    assert (tmp_path / "unet.onnx").read_text() == "someone else's"


def test_importing_the_package_does_not_import_onnx():
    code = "import sys, illustrated_sd; print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_a_graph_beyond_tolerance_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    sd1 = isd.IllustratedPipeline(isd.build_random_pipeline("tiny-sd1"))
    monkeypatch.setitem(TOLERANCE, "float32", {name: -1.0 for name in TOLERANCE["float32"]})  # every difference is over
    with pytest.raises(ValueError, match=r"text_encoder.onnx \(float32 weights\) differs from PyTorch: last_hidden_state by"):
        export_onnx(sd1, tmp_path)
    assert not list(tmp_path.iterdir())
