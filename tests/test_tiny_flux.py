"""tiny-flux's training and loading: span corruption, the flow-matching loss, the stages, the export without the parts
it shares with tiny-sd 2, and load_pipeline putting them back (equal to plain diffusers)."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

import illustrated_sd as isd
from illustrated_sd.models.transformers import TINY_FLUX
from illustrated_sd.paths import TINY_SD
from illustrated_sd.train.__main__ import main as train_main
from illustrated_sd.train.flux import SHARED, flow_matching_loss, span_corruption, world_t5_tokenizer
from illustrated_sd.world import known_words_2


def test_the_world_t5_tokenizer_has_a_piece_per_world_word_and_spells_the_rest():
    tokenizer = world_t5_tokenizer()
    for word in known_words_2():
        assert tokenizer.tokenize(word) == ["▁" + word]
    assert tokenizer("a red circle").input_ids[-1] == tokenizer.eos_token_id == 1 and tokenizer.pad_token_id == 0
    assert tokenizer.unk_token_id not in tokenizer("an unusual zebra").input_ids  # spelled in letters, not <unk>
    assert len({tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(TINY_FLUX["sentinels"])}) == TINY_FLUX["sentinels"]


@pytest.mark.parametrize("n", [1, 2, 7, 20, 45])
def test_span_corruption_cuts_spans_out_and_the_target_says_what_was_cut(n):
    ids, sentinels = list(range(100, 100 + n)), [90, 91, 92, 93]
    for seed in range(20):
        inputs, targets = span_corruption(ids, np.random.default_rng(seed), sentinels, eos=1)
        assert inputs[-1] == targets[-1] == 1
        used = [t for t in targets if t in sentinels]
        assert used == sentinels[:len(used)] and [t for t in inputs if t in sentinels] == used and used
        # put each span back where its sentinel stands: the caption again
        spans, current = {}, None
        for t in targets[:-1]:
            current = t if t in sentinels else current
            spans.setdefault(current, []).extend([] if t in sentinels else [t])
        restored = [x for t in inputs[:-1] for x in (spans[t] if t in sentinels else [t])]
        assert restored == ids
        cut = sum(len(v) for v in spans.values())
        assert cut == min(n, max(1, round(0.15 * n)))


def test_flow_matching_loss_is_zero_for_the_true_velocity_and_positive_otherwise():
    class Oracle(torch.nn.Module):  # knows ε − x₀ from x_σ and σ, because x₀ is fixed: v = (x_σ − x₀) / σ
        def forward(self, hidden_states, timestep, **_):
            return ((hidden_states - x0) / timestep[:, None, None],)

    x0 = torch.randn(3, 64, 16)
    args = dict(text=torch.zeros(3, 8, 4), pooled=torch.zeros(3, 4), image_ids=torch.zeros(64, 3), text_ids=torch.zeros(8, 3), mu=0.4)
    assert flow_matching_loss(Oracle(), x0, generator=torch.Generator().manual_seed(0), **args) < 1e-8
    wrong = lambda hidden_states, **_: (torch.zeros_like(hidden_states),)  # noqa: E731  predicts no motion
    assert flow_matching_loss(wrong, x0, generator=torch.Generator().manual_seed(0), **args) > 0.5


def test_flow_matching_loss_draws_sigma_around_its_location():
    """--sigma-location moves the logit-normal draw: below 0 the noise levels trained on are lower, same draw otherwise."""
    seen = {}

    def record(hidden_states, timestep, **_):  # keeps the σ each call was handed
        seen.setdefault("sigma", []).append(timestep)
        return (torch.zeros_like(hidden_states),)

    x0, args = torch.randn(512, 4, 2), dict(text=torch.zeros(512, 2, 2), pooled=torch.zeros(512, 2), image_ids=torch.zeros(4, 3),
                                            text_ids=torch.zeros(2, 3), mu=0.4675)
    for location in (0.0, -0.5, 0.0):
        flow_matching_loss(record, x0, generator=torch.Generator().manual_seed(1), location=location, **args)
    plain, low, again = seen["sigma"]
    torch.testing.assert_close(plain, again)  # location 0 is SD3's draw, unchanged
    assert (low < plain).all()  # the same normal draws, moved: every σ lower
    assert 0.58 < plain.median() < 0.65 and 0.46 < low.median() < 0.53  # shifted(sigmoid(0), μ) ≈ 0.61; at -0.5 ≈ 0.49


@pytest.fixture(scope="module")
def smoke_tiny_flux(tmp_path_factory):
    """A tiny-flux trained for 3 smoke steps per stage and exported beside (a link to) the shipped tiny-sd."""
    if not TINY_SD.is_dir():
        pytest.skip("the embedded tiny-sd is not in this copy")
    root = tmp_path_factory.mktemp("embedded")
    (root / "tiny-sd").symlink_to(TINY_SD)
    assert train_main(["run", "--smoke", "--stages", "t5,flux", "--minutes", "1,1", "--out", str(root / "ckpt")]) == 0
    assert train_main(["export", str(root / "ckpt"), str(root / "tiny-flux")]) == 0
    return root / "tiny-flux"


def test_grounded_attention_is_the_models_own_and_keeps_the_image_to_text_probabilities():
    """The flux stage's token loss reads the attention through GroundedAttention: the transformer's output must not
    change, and the kept probabilities (picture rows, text columns) must carry gradients back to the weights."""
    from diffusers import FluxTransformer2DModel
    from illustrated_sd.recording.joint_attention import joint_layers
    from illustrated_sd.train.flux import grounded_attention

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**TINY_FLUX["transformer"])
    B, side, T = 2, 4, 8  # a 4×4 grid of image tokens, 8 text slots
    inputs = dict(hidden_states=torch.randn(B, side * side, transformer.config.in_channels),
                  encoder_hidden_states=torch.randn(B, T, transformer.config.joint_attention_dim),
                  pooled_projections=torch.randn(B, transformer.config.pooled_projection_dim), timestep=torch.full((B,), 0.5),
                  img_ids=FluxPipeline._prepare_latent_image_ids(1, side, side, "cpu", torch.float32), txt_ids=torch.zeros(T, 3),
                  return_dict=False)
    if transformer.config.guidance_embeds:
        inputs["guidance"] = torch.full((B,), 1.0)
    plain = transformer(**inputs)[0]
    originals = {name: attn.processor for name, attn in joint_layers(transformer).items()}
    with grounded_attention(transformer, T) as store:
        grounded = transformer(**inputs)[0]
    torch.testing.assert_close(grounded, plain, atol=1e-5, rtol=1e-4)
    layers = joint_layers(transformer)
    assert list(store) == list(layers)  # every double- and single-stream layer
    heads = layers["double.0"].heads
    for probs in store.values():
        assert probs.shape == (B * heads, side * side, T)
        assert (probs.sum(-1) < 1).all()  # a picture token's share on the text: the picture's tokens take the rest
    sum(p[:, :, 3].sum() for p in store.values()).backward()  # a loss on one word's column …
    assert transformer.transformer_blocks[0].attn.to_q.weight.grad.abs().sum() > 0  # … reaches the image queries' weights
    assert all(attn.processor is originals[name] for name, attn in layers.items())  # the model's own are back
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), grounded_attention(transformer, T) as store:
        transformer(**inputs)  # under autocast (as on a GPU), the probabilities are still computed in float32
    assert {p.dtype for p in store.values()} == {torch.float32}


def test_the_flux_stage_trains_with_the_token_loss_and_refuses_negative_weights(tmp_path, capsys):
    if not TINY_SD.is_dir():
        pytest.skip("the embedded tiny-sd is not in this copy")
    losses = {}
    for name, grounding in (("plain", []), ("grounded", ["--token-loss", "0.5", "--binding", "0.5"])):
        ckpt = tmp_path / name  # the same seed, scenes and first weights: only the loss differs
        assert train_main(["run", "--smoke", "--stages", "t5,flux", "--minutes", "1,1", "--out", str(ckpt), "--two-objects", "0.5",
                           *grounding]) == 0
        log = json.loads((ckpt / "train_log.json").read_text())
        assert log["flux"]["total_steps"] == 3 and all(np.isfinite(log["flux"]["loss"]))
        losses[name] = log["flux"]["loss"][0]  # the first step's (smoke runs log every step)
    assert losses["grounded"] > losses["plain"]  # the grounding terms were added: words do not yet look at their objects
    capsys.readouterr()
    assert train_main(["run", "--smoke", "--stages", "flux", "--minutes", "1", "--out", str(ckpt), "--token-loss", "-1"]) == 2
    assert "--token-loss is a loss weight" in capsys.readouterr().err
    assert train_main(["run", "--smoke", "--stages", "ground", "--minutes", "1", "--out", str(tmp_path / "sd"), "--token-loss", "1"]) == 2
    assert "it needs --stages flux" in capsys.readouterr().err


def test_the_flux_stage_can_train_t5s_encoder_with_the_transformer(tmp_path, capsys):
    """--tune-t5: the flow-matching loss reaches T5's encoder, whose weights go back into the checkpoint's t5 (read by
    t5_encoder and the export); the decoder, which Flux does not keep, stays as the t5 stage left it."""
    if not TINY_SD.is_dir():
        pytest.skip("the embedded tiny-sd is not in this copy")
    from illustrated_sd.train.flux import new_t5, t5_encoder
    from illustrated_sd.trace.files import load_weights

    ckpt = tmp_path / "fc"
    assert train_main(["run", "--smoke", "--stages", "t5", "--minutes", "1", "--out", str(ckpt)]) == 0
    before = new_t5(world_t5_tokenizer())
    load_weights(before, ckpt, "t5")
    assert train_main(["run", "--smoke", "--stages", "flux", "--minutes", "1", "--out", str(ckpt), "--tune-t5"]) == 0
    after = new_t5(world_t5_tokenizer())
    assert load_weights(after, ckpt, "t5")
    old, new = before.state_dict(), after.state_dict()
    assert not torch.equal(old["encoder.block.0.layer.0.SelfAttention.q.weight"], new["encoder.block.0.layer.0.SelfAttention.q.weight"])
    assert not torch.equal(old["shared.weight"], new["shared.weight"])  # the tuned token table survives T5's tied names
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith("decoder.block."))
    encoder = t5_encoder(ckpt).state_dict()  # what the export and the next run read
    assert all(torch.equal(encoder[k], new[k].float()) for k in encoder)
    assert train_main(["export", str(ckpt), str(tmp_path / "model")]) == 0  # the transformer's weights load as before
    capsys.readouterr()
    assert train_main(["run", "--smoke", "--stages", "t5", "--minutes", "1", "--out", str(ckpt), "--tune-t5"]) == 2
    assert "--tune-t5 trains T5 with tiny-flux's transformer: it needs --stages flux" in capsys.readouterr().err


def test_the_export_ships_only_what_tiny_flux_does_not_share(smoke_tiny_flux):
    names = {p.name for p in smoke_tiny_flux.iterdir()}
    assert {"transformer", "text_encoder_2", "tokenizer_2", "scheduler", "model_index.json"} <= names
    assert not names & set(SHARED)
    info = json.loads((smoke_tiny_flux / "illustrated_sd.json").read_text())
    assert info["shares"] == {name: "tiny-sd" for name in SHARED} and info["image_size"] == 128
    log = json.loads((smoke_tiny_flux / "train_log.json").read_text())
    assert log["t5"]["total_steps"] == 3 and log["flux"]["total_steps"] == 3 and log["world"] == 2


def test_loaded_tiny_flux_is_traced_and_equals_plain_diffusers(smoke_tiny_flux):
    pipe = isd.load_pipeline(smoke_tiny_flux)
    assert pipe.family == "flux" and pipe.default_size == 128 and pipe.vae.config.shift_factor == 0.0
    assert pipe.defaults == {"num_inference_steps": 25, "true_cfg_scale": 4.0, "negative_prompt": "", "max_sequence_length": 64}
    trace = pipe("a red circle on the left", seed=3, num_inference_steps=4, progress=False)
    assert trace.image.size == (128, 128) and trace.text_length == 64 and trace.latents.shape == (5, 4, 16, 16)
    plain = FluxPipeline(**pipe.pipeline.components)("a red circle on the left", negative_prompt="", true_cfg_scale=4.0,
                                                      num_inference_steps=4, height=128, width=128, max_sequence_length=64,
                                                      generator=torch.Generator("cpu").manual_seed(3)).images[0]
    assert np.array_equal(np.asarray(plain), np.asarray(trace.image))
    # the shared parts are tiny-sd's own weights
    sd = isd.load_pipeline()
    assert all(torch.equal(a, b) for a, b in zip(sd.vae.parameters(), pipe.vae.parameters()))


def test_a_missing_shared_folder_says_what_to_keep_beside_it(smoke_tiny_flux, tmp_path):
    import shutil

    lonely = tmp_path / "tiny-flux"
    shutil.copytree(smoke_tiny_flux, lonely)
    with pytest.raises(isd.ModelLoadError, match="takes its vae from .*tiny-sd.* keep the tiny-sd folder beside it"):
        isd.load_pipeline(lonely)


def test_one_checkpoint_holds_one_model(tmp_path, capsys):
    ckpt = tmp_path / "c"
    assert train_main(["run", "--smoke", "--stages", "t5", "--minutes", "1", "--out", str(ckpt)]) == 0
    assert train_main(["run", "--smoke", "--stages", "unet", "--minutes", "1", "--out", str(ckpt)]) == 2
    assert "train each into its own --out folder" in capsys.readouterr().err
    assert train_main(["run", "--smoke", "--stages", "t5,clip", "--minutes", "1,1", "--out", str(tmp_path / "d")]) == 2
    assert train_main(["run", "--smoke", "--stages", "t5", "--world", "1", "--minutes", "1", "--out", str(tmp_path / "e")]) == 2
    assert "tiny-flux learns the version-2 world" in capsys.readouterr().err


def test_embedded_models_by_name():
    assert "tiny-sd" in isd.embedded_models()
    assert isd.load_pipeline("tiny-sd").name == isd.load_pipeline().name


def test_the_evaluator_grades_tiny_flux_with_real_guidance(smoke_tiny_flux):
    from illustrated_sd.evaluate import draw, evaluate, prompt_set

    pipe = isd.load_pipeline(smoke_tiny_flux)
    assert pipe.world == 2
    cases = prompt_set(world=2)[:2]
    result = evaluate(pipe, cases, steps=2, guidance=4.0)
    assert result["settings"]["world"] == 2 and len(result["cases"]) == 2
    assert 0 <= result["summary"]["pointing_game"] <= 1
    # a transformer's words also read the picture: the same pointing game on text→image attention
    assert 0 <= result["summary"]["pointing_game_text_to_image"] <= 1
    assert all(set(o["reads"]) == set(o["points"]) for case in result["cases"] for o in case["objects"])
    # the guidance scale is real CFG against "": s = 1 is the prompt alone, and a larger s changes the picture
    alone, guided = (np.asarray(draw(pipe, cases[0][0], 2, s, seed=0).image, dtype=float) for s in (1.0, 4.0))
    plain = pipe(cases[0][0], num_inference_steps=2, true_cfg_scale=1.0, seed=0, progress=False).image
    assert np.array_equal(alone, np.asarray(plain, dtype=float)) and not np.array_equal(alone, guided)


def test_the_evaluator_grades_each_model_at_its_own_guidance_unless_told(smoke_tiny_flux, tmp_path):
    from illustrated_sd.evaluate import main as evaluate_main

    common = ["--model", str(smoke_tiny_flux), "--only", "single", "--limit", "1", "--seeds", "1", "--steps", "1"]
    assert evaluate_main([*common, "--out", str(tmp_path / "own.json")]) == 0
    assert json.loads((tmp_path / "own.json").read_text())["settings"]["guidance"] == 4.0  # tiny-flux's real CFG, not SD's 7.5
    assert evaluate_main([*common, "--guidance", "2", "--out", str(tmp_path / "told.json")]) == 0
    assert json.loads((tmp_path / "told.json").read_text())["settings"]["guidance"] == 2.0


def test_guidance_option_names_the_option_each_model_reads(smoke_tiny_flux):
    from illustrated_sd.models.loading import model_defaults
    from illustrated_sd.models.transformers import build_random_flux, build_random_sd3

    assert isd.load_pipeline(smoke_tiny_flux).guidance_option(5.0) == {"true_cfg_scale": 5.0}  # real CFG, no guidance input
    assert isd.IllustratedPipeline(build_random_flux()).guidance_option(5.0) == {"guidance_scale": 5.0}  # Flux-dev: distilled
    assert isd.IllustratedPipeline(build_random_sd3()).guidance_option(5.0) == {"guidance_scale": 5.0}  # SD3: CFG
    assert isd.load_pipeline().guidance_option(5.0) == {"guidance_scale": 5.0}
    assert model_defaults(smoke_tiny_flux) == {"steps": 25, "guidance": 4.0}
    # the diagram draws what a call does: 64 T5 slots, two passes against ""
    boxes = isd.plot.overview.flow_boxes(isd.load_pipeline(smoke_tiny_flux))
    assert "T5 64 slots" in boxes["tokenizer"][1] and "s = 4" in boxes["guidance"][1]


def test_reflow_distills_a_student_that_starts_as_the_teacher_and_loads_as_tiny_flux_fast(smoke_tiny_flux, capsys):
    from safetensors.torch import load_file
    from torch.nn.utils import parametrize

    from illustrated_sd.trace.files import load_weights
    from illustrated_sd.models.loading import weights_sha256
    from illustrated_sd.train.distill import RANK, start_from, student_transformer, teacher_pairs

    root = smoke_tiny_flux.parent
    teacher = isd.load_pipeline(smoke_tiny_flux)
    student = student_transformer(teacher.transformer)
    # before training the student is the teacher, whatever guidance it is given (its guidance embedder's last layer is 0)
    x, text = torch.randn(1, 64, 16), torch.randn(1, 64, TINY_FLUX["transformer"]["joint_attention_dim"])
    args = dict(hidden_states=x, encoder_hidden_states=text, pooled_projections=torch.randn(1, 128), timestep=torch.tensor([0.5]),
                img_ids=torch.zeros(64, 3), txt_ids=torch.zeros(64, 3), return_dict=False)
    with torch.no_grad():
        want = teacher.transformer(**args)[0]
        for g in (1.0, 7.0):
            assert torch.allclose(student(**args, guidance=torch.tensor([g]))[0], want, atol=1e-6)
    # the teacher's pairs are what FluxPipeline draws from that noise with real CFG at that scale
    noise, x0, _, _ = teacher_pairs(teacher.pipeline, ["a red circle on the left"], torch.tensor([4.0]),
                                    torch.Generator().manual_seed(0), steps=3)
    plain = teacher.pipeline("a red circle on the left", negative_prompt="", true_cfg_scale=4.0, num_inference_steps=3,
                             height=128, width=128, max_sequence_length=64, latents=noise.clone(), output_type="latent").images
    assert torch.allclose(x0, plain, atol=1e-5)
    # the stages, the export beside tiny-flux and tiny-sd, and loading it by folder
    ckpt = root / "fast-ckpt"
    assert train_main(["run", "--smoke", "--stages", "pairs,reflow", "--minutes", "1,1", "--teacher", str(smoke_tiny_flux),
                       "--out", str(ckpt)]) == 0
    assert train_main(["export", str(ckpt), str(root / "tiny-flux-fast")]) == 0
    info = json.loads((root / "tiny-flux-fast" / "illustrated_sd.json").read_text())
    assert info["shares"]["text_encoder_2"] == "tiny-flux" and info["shares"]["vae"] == "tiny-sd"
    assert {p.name for p in (root / "tiny-flux-fast").iterdir()} >= {"transformer", "scheduler", "model_index.json"}
    # it ships a correction of tiny-flux's transformer, not a transformer: B·A per linear layer and the guidance embedder
    shipped = load_file(root / "tiny-flux-fast" / "transformer" / "low_rank.safetensors")
    assert not list((root / "tiny-flux-fast" / "transformer").glob("diffusion_pytorch_model*"))
    assert info["corrects"] == {"transformer": "tiny-flux"}
    corrected = {k[: -len(".lora_A.weight")] for k in shipped if k.endswith(".lora_A.weight")}
    assert "transformer_blocks.0.attn.to_q" in corrected and "single_transformer_blocks.2.proj_out" in corrected
    assert all(shipped[f"{n}.lora_A.weight"].shape[0] == RANK == shipped[f"{n}.lora_B.weight"].shape[1] for n in corrected)
    assert any(k.startswith("time_text_embed.guidance_embedder.") for k in shipped)
    assert sum(v.numel() for v in shipped.values()) < 0.5 * sum(p.numel() for p in teacher.transformer.parameters())
    fast = isd.load_pipeline(root / "tiny-flux-fast")
    assert fast.transformer.config.guidance_embeds and fast.guidance_option(2.0) == {"guidance_scale": 2.0}
    assert not any(parametrize.is_parametrized(m) for m in fast.transformer.modules())  # fused: a plain diffusers model
    # the fused model computes what the trained student computed (float16 storage aside)
    trained = student_transformer(teacher.transformer)
    load_weights(trained, ckpt, "transformer")
    assert any(v.abs().max() > 0 for k, v in trained.state_dict().items() if k.endswith("lora_B"))  # training moved it
    with torch.no_grad():
        got, want = fast.transformer(**args, guidance=torch.tensor([3.0]))[0], trained(**args, guidance=torch.tensor([3.0]))[0]
    assert torch.allclose(got, want, atol=2e-3), (got - want).abs().max()
    trace = fast("a red circle on the left", seed=0, progress=False)
    assert trace.num_steps == 4 and trace.image.size == (128, 128)  # its defaults: 4 steps, one pass each
    # a wider student started from the shipped correction computes what it computes (its extra ranks start at B = 0)
    wider = student_transformer(teacher.transformer, rank=RANK + 4)
    start_from(wider, shipped)
    with torch.no_grad():
        assert torch.allclose(wider(**args, guidance=torch.tensor([3.0]))[0], got, atol=2e-3)
    with pytest.raises(ValueError, match=f"pass --rank {RANK} or more"):
        start_from(student_transformer(teacher.transformer, rank=2), shipped)
    # the options that shape a student are checked before any minute is spent, and a checkpoint keeps its own
    bad = {"narrower than the correction": (["--rank", "2", "--init", str(root / "tiny-flux-fast")], "pass --rank 16 or more"),
           "no reflow stage": (["--rank", "8"], "need --stages reflow"),
           "another rank for a begun student": (["--rank", "8"], "was begun at rank 16"),
           "a start for a begun student": (["--init", str(root / "tiny-flux-fast")], "already has a student")}
    for what, (options, message) in bad.items():
        stages = ["pairs"] if what == "no reflow stage" else ["reflow"]
        out = str(root / "too-narrow") if what == "narrower than the correction" else str(ckpt)
        assert train_main(["run", "--smoke", "--stages", *stages, "--minutes", "1", "--teacher", str(smoke_tiny_flux), *options,
                           "--out", out]) == 2, what
        assert message in capsys.readouterr().err, what
    # the grading script of notebook 12, on both: its figures, and which weights it saw
    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "jump_grades.py"))
    out = root / "jump.json"
    result = script["main"](["--models", f"{smoke_tiny_flux},{root / 'tiny-flux-fast'}", "--limit", "1", "--seeds", "2",
                             "--steps", "1", "--paths", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    for name in (str(smoke_tiny_flux), str(root / "tiny-flux-fast")):
        grades = result[name]["held-out"]["1"]
        assert grades["pictures"] == 2 and 0 <= grades["color"] <= 1 and 0 < grades["diversity"] <= 1
        assert 0 < result[name]["straightness_25_steps"] <= 1 and result["weights_sha256"][name] == weights_sha256(name)
    assert (result[str(smoke_tiny_flux)]["passes_per_step"], result[str(root / "tiny-flux-fast")]["passes_per_step"]) == (2, 1)


def test_the_filmstrip_draws_a_flow_trace_by_sigma(smoke_tiny_flux):
    import matplotlib

    matplotlib.use("Agg")
    pipe = isd.load_pipeline(smoke_tiny_flux)
    trace = pipe("a red circle on the left", seed=0, num_inference_steps=4, progress=False)
    fig = isd.plot.denoising_filmstrip(trace, "pred_x0", n=4, decode=pipe.decode_latents)
    assert [ax.get_title() for ax in fig.axes][0] == f"step 0\nσ = {trace.sigmas[0]:.2f}"
    fig = isd.plot.denoising_filmstrip(trace, "velocity", n=4)
    assert "velocity" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="what must be one of \\['latents', 'pred_x0', 'velocity'\\]"):
        isd.plot.denoising_filmstrip(trace, "noise")


def test_the_side_by_side_script_measures_both_models_on_the_same_prompts(smoke_tiny_flux, tmp_path):
    import runpy

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "compare_denoisers.py"))
    out = tmp_path / "denoisers.json"
    result = script["main"](["--models", f"tiny-sd,{smoke_tiny_flux}", "--prompts", "1", "--steps", "1,2", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    for name in ("tiny-sd", str(smoke_tiny_flux)):
        model = result["models"][name]
        assert set(model["few_steps"]) == {"1", "2"} and 0 <= model["few_steps"]["2"]["adherence"] <= 1
        assert 0 <= model["binding"]["colour_leakage"] <= 1 and model["binding"]["prompts"] == 1
        assert model["first_x0"]["median_ratio"][0] > 0
    assert result["models"]["tiny-sd"]["guidance"] == 7.5 and result["models"][str(smoke_tiny_flux)]["guidance"] == 4.0


def test_attention_at_scale_also_scores_where_a_transformers_words_read_the_picture(smoke_tiny_flux, tmp_path, monkeypatch):
    """Over a compact tiny-flux prompt set, with the detector told that every named object was drawn filling the
    picture (the smoke model draws nothing yet): every word's text→image map then points inside its object."""
    from types import SimpleNamespace

    from illustrated_sd import evaluate
    from illustrated_sd.trace.sets import read_prompts, run_prompt_set

    pipe = isd.load_pipeline(smoke_tiny_flux)
    singles = [(text, objects[0]) for text, objects, held_out in evaluate.prompt_set(world=2) if len(objects) == 1]
    cases = list({position: (text, (color, shape)) for text, (color, shape, position) in singles}.items())[:2]  # two places
    (tmp_path / "p.txt").write_text("".join(f"{text}\n" for _, (text, _) in cases))
    run_prompt_set(lambda device: pipe, read_prompts(tmp_path / "p.txt"), tmp_path / "set", settings={"num_inference_steps": 2},
                   record=isd.RecordOptions(compact=True), progress=False)
    whole, drawn = np.ones((128, 128), dtype=bool), {position: words for position, (_, words) in cases}
    monkeypatch.setattr(evaluate, "match_object", lambda found, position, n, world: SimpleNamespace(
        color=drawn[position][0], shape=drawn[position][1], mask=whole))
    result = evaluate.attention_at_scale(tmp_path / "set", world=2)
    assert result["objects_drawn_right"] == 2
    for table in (result, result["text_to_image"]):
        for kind in ("colour", "shape", "position"):
            assert table[kind]["words"] == 2 and table[kind]["pointing"] == 1


def test_t5_binding_tells_a_bag_of_words_from_an_encoder_that_reads_context():
    """scripts/t5_binding.py: an encoder that gives each word its own vector whatever surrounds it (an embedding table)
    hands the transformer the same vectors for a prompt and its colour-swapped twin (cosines 1); CLIP's causal tower
    writes the words before a word into it (cosines below 1)."""
    import runpy

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "t5_binding.py"))
    prompts = script["pair_prompts"](6)
    prompt, swapped, shape_1, shape_2 = prompts[0]
    assert sorted(prompt.split()) == sorted(swapped.split()) and prompt != swapped and shape_1 in prompt and shape_2 in prompt
    sd = isd.load_pipeline().pipeline
    table = torch.nn.Embedding.from_pretrained(sd.text_encoder.get_input_embeddings().weight)
    bag = script["word_cosines"](sd.tokenizer, lambda ids: (table(ids),), prompts, 77)
    clip = script["word_cosines"](sd.tokenizer, sd.text_encoder, prompts, 77)
    assert len(bag["shape"]) == len(bag["colour"]) == 12
    assert min(bag["shape"] + bag["colour"]) > 0.9999
    assert max(clip["colour"]) < 0.99 and np.mean(clip["shape"]) < 0.99


def test_remove_colour_pooled_strips_the_colour_words_from_clips_prompt_only():
    """scripts/remove_colour_pooled.py: CLIP's prompt loses its colour words (articles mended), T5's keeps them."""
    import runpy

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "remove_colour_pooled.py"))
    assert script["without_colours"]("an orange heart on the left") == "a heart on the left"
    assert script["without_colours"]("a white circle at the top and a red star in the center") == "a circle at the top and a star in the center"


def test_held_out_reading_tallies_what_was_drawn_and_what_the_decoder_returns(smoke_tiny_flux, tmp_path):
    """scripts/held_out_reading.py: for each held-out pair asked, what the detector read in the drawn pictures and in
    the VAE's round trips of rendered ones; every picture counted once, the file written as returned."""
    import runpy

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "held_out_reading.py"))
    out = tmp_path / "reading.json"
    result = script["main"](["--model", str(smoke_tiny_flux), "--seeds", "2", "--prompts", "10", "--scenes", "8", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    # the first ten held-out prompts: the purple star in its nine places, then the orange heart; each drawn twice
    assert {asked: sum(read.values()) for asked, read in result["drawn"].items()} == {"purple star": 18, "orange heart": 2}
    for reading in ("originals", "round_trip"):
        assert sum(sum(read.values()) for read in result[reading].values()) == 8
        assert set(result[reading]) <= set(result["held_out"])
    # rendered originals are read as what they are (the detector's own misreadings are not the decoder's)
    assert all(read == {asked: sum(read.values())} for asked, read in result["originals"].items())


def test_shape_swapped_changes_only_shape_words_never_into_a_held_out_pair_and_marks_the_colours_before_them():
    from illustrated_sd.train.flux import shape_swapped
    from illustrated_sd.world import HELD_OUT

    tokenizer = world_t5_tokenizer()
    caption = "an orange circle and a red star on a plain white background"
    ids = torch.tensor([tokenizer(caption).input_ids] * 200)
    generator = torch.Generator().manual_seed(0)
    swapped, slots = shape_swapped(ids, tokenizer, generator)
    words = caption.split()
    assert [words[i] for i in slots[0].nonzero().flatten().tolist()] == ["orange", "red"]  # "white" is not before a shape
    changed = (swapped != ids).any(0).nonzero().flatten().tolist()
    assert [words[i] for i in changed] == ["circle", "star"]  # the shapes, and nothing else
    read = {tokenizer.decode(row) for row in swapped}
    assert len(read) > 20 and not any(f"{c} {s}" in text for text in read for c, s in HELD_OUT)


def test_colour_consistency_is_zero_for_a_t5_that_ignores_the_next_word_and_positive_for_one_that_reads_it():
    from illustrated_sd.train.flux import colour_consistency, new_t5

    tokenizer = world_t5_tokenizer()
    ids = torch.tensor([tokenizer("a big red circle at the top left").input_ids])
    t5 = new_t5(tokenizer).encoder.eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        assert colour_consistency(t5, ids, t5(ids)[0], tokenizer, generator) > 0  # attention reads the next word
        word_by_word = lambda x: (t5.embed_tokens(x),)  # noqa: E731  no attention: a word's vector is its own
        assert colour_consistency(word_by_word, ids, word_by_word(ids)[0], tokenizer, generator) == 0
        no_colour = torch.tensor([tokenizer("a circle at the top left").input_ids])
        assert colour_consistency(t5, no_colour, t5(no_colour)[0], tokenizer, generator) == 0


def test_import_makes_a_checkpoint_of_the_shipped_tiny_flux_that_the_flux_stage_trains_on(tmp_path, capsys):
    """train import on tiny-flux's folder: the transformer and the T5 encoder as shipped (a fresh T5 decoder), which
    the flux stage then trains on, here with --tune-t5 and --t5-consistency (which needs --tune-t5)."""
    folder = TINY_SD.parent / "tiny-flux"
    if not folder.is_dir():
        pytest.skip("the embedded tiny-flux is not in this copy")
    from illustrated_sd.train.flux import t5_encoder
    from illustrated_sd.trace.files import load_weights

    ckpt = tmp_path / "fc"
    assert train_main(["import", str(folder), str(ckpt)]) == 0
    shipped = isd.load_pipeline("tiny-flux").pipeline
    transformer = type(shipped.transformer).from_config(shipped.transformer.config)
    assert load_weights(transformer, ckpt, "transformer")
    assert all(torch.equal(v, shipped.transformer.state_dict()[k]) for k, v in transformer.state_dict().items())
    tokens = torch.tensor([world_t5_tokenizer()("an orange heart on the left").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(t5_encoder(ckpt)(tokens)[0], shipped.text_encoder_2(tokens)[0])
    assert json.loads((ckpt / "train_log.json").read_text())["flux"] == json.loads((folder / "train_log.json").read_text())["flux"]
    argv = ["run", "--smoke", "--stages", "flux", "--minutes", "1", "--out", str(ckpt), "--tune-t5"]
    assert train_main(argv + ["--t5-consistency", "1"]) == 0
    with torch.no_grad():
        assert not torch.allclose(t5_encoder(ckpt)(tokens)[0], shipped.text_encoder_2(tokens)[0])  # T5 trained on
    capsys.readouterr()
    assert train_main(argv[:-1] + ["--t5-consistency", "1"]) == 2
    assert "--t5-consistency shapes the T5 that --tune-t5 trains: add --tune-t5" in capsys.readouterr().err
    assert train_main(argv[:-1] + ["--sigma-location", "-0.5"]) == 0  # σ drawn lower: the flux stage trains on
    assert train_main(["run", "--smoke", "--stages", "unet", "--minutes", "1", "--out", str(tmp_path / "u"), "--sigma-location", "-0.5"]) == 2
    assert "--sigma-location moves where tiny-flux's noise levels are drawn: it needs --stages flux" in capsys.readouterr().err


def test_held_out_text_swap_changes_only_what_each_variant_says(smoke_tiny_flux):
    """scripts/held_out_text_swap.py: a held-out pair made a seen one, its colour taken out, and T5's colour word alone
    taken from the seen pair's prompt (every other T5 vector and CLIP's pooled vector as they are)."""
    import runpy

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "held_out_text_swap.py"))
    assert script["seen_pair"]("an orange heart on the left") == "an orange circle on the left"
    assert script["without_colour"]("an orange heart on the left") == "a heart on the left"
    assert script["seen_pair"]("a red heart on the left") == "a red heart on the left"  # a seen pair stays
    pipe = isd.load_pipeline(smoke_tiny_flux).pipeline
    encode, prompt = pipe.encode_prompt, "an orange heart on the left"
    options = dict(device="cpu", max_sequence_length=16)
    with torch.no_grad():
        plain, pooled, _ = encode(prompt=prompt, prompt_2=None, **options)
        seen = encode(prompt=prompt, prompt_2="an orange circle on the left", **options)[0]
        spliced, pooled_too, _ = script["colour_from_seen_pair"](encode, pipe.tokenizer_2)(prompt=prompt, **options)
    orange = pipe.tokenizer_2(prompt).input_ids.index(pipe.tokenizer_2("orange", add_special_tokens=False).input_ids[0])
    assert (spliced != plain).any(-1)[0].nonzero().flatten().tolist() == [orange]
    assert torch.equal(spliced[0, orange], seen[0, orange]) and torch.equal(pooled_too, pooled)


def test_held_out_decision_reads_every_steps_x0_of_the_grades_pictures():
    """scripts/held_out_decision.py: the held-out prompts asking for a colour, drawn with the grade's seeds, each step's
    x̂₀ read as one of two colours; the last step reads as the picture; a seen shape swapped in; a colour no held-out
    pair has is refused with the ones to ask for."""
    import runpy

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "held_out_decision.py"))
    result = script["decisions"]("tiny-flux", "orange", "yellow", seeds=1, prompts=2)
    assert result["steps"] == 25 and result["runs"] + result["left_out"] == 2 and len(result["prompts"]) == 2
    assert all("orange heart" in p for p in result["prompts"])
    assert len(result["decided_at"]["asked"]) + len(result["decided_at"]["other"]) == result["runs"]
    if result["runs"]:
        assert result["share_matching_the_end"][-1] == 1.0 and len(result["share_matching_the_end"]) == 25
    seen = script["decisions"]("tiny-flux", "orange", "yellow", seeds=1, seen="circle", prompts=1)
    assert seen["prompts"] == [result["prompts"][0].replace("heart", "circle")]
    with pytest.raises(ValueError, match="ask for one of the held-out pairs' colours .*orange"):
        script["decisions"]("tiny-flux", "red", "yellow", seeds=1)


def test_rebase_moves_tiny_flux_fast_onto_a_retrained_tiny_flux_and_loading_refuses_a_stale_correction(tmp_path, capsys):
    """A correction fits the base it was made for: after tiny-flux changes, loading tiny-flux-fast names the fix, and
    `train rebase` (here on a base changed by a rank-1 step and a bias, which the SVD start undoes exactly) gives back
    the student it was, with the same rank, and loads again."""
    import shutil

    from safetensors.torch import load_file, save_file

    from illustrated_sd.models.loading import ModelLoadError, weights_sha256
    from illustrated_sd.paths import TINY_FLUX, TINY_FLUX_FAST
    from illustrated_sd.train.distill import correction_rank, rebase_correction

    if not TINY_FLUX_FAST.is_dir():
        pytest.skip("the embedded tiny-flux-fast is not in this copy")
    assets, old = tmp_path / "assets", tmp_path / "old" / "tiny-flux"
    assets.mkdir()
    (assets / "tiny-sd").symlink_to(TINY_SD)
    shutil.copytree(TINY_FLUX, assets / "tiny-flux")
    shutil.copytree(TINY_FLUX_FAST, assets / "tiny-flux-fast")
    shutil.copytree(TINY_FLUX, old)
    before = isd.load_pipeline(assets / "tiny-flux-fast").transformer.state_dict()
    weights = assets / "tiny-flux" / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    name = "transformer_blocks.0.attn.to_q"
    factors = load_file(assets / "tiny-flux-fast" / "transformer" / "low_rank.safetensors")
    # a step inside the correction's own directions, so that the old student minus the new base keeps its rank
    step = factors[name + ".lora_B.weight"][:, :4].float() @ factors[name + ".lora_A.weight"][:4].float()
    state[name + ".weight"] = (state[name + ".weight"].float() + 0.5 * step).half()
    state[name + ".bias"] = state[name + ".bias"] + 0.1  # a whole tensor: shipped as the student had it
    save_file(state, weights)
    with pytest.raises(ModelLoadError, match="rebase"):
        isd.load_pipeline(assets / "tiny-flux-fast")
    log = rebase_correction(assets / "tiny-flux-fast", old, minutes=1, batch_size=4, samples=8, max_steps=1)
    after = isd.load_pipeline(assets / "tiny-flux-fast").transformer.state_dict()
    assert correction_rank(assets / "tiny-flux-fast") == correction_rank(TINY_FLUX_FAST)
    moved = {k: ((after[k].float() - v.float()).norm() / v.float().norm().clamp(min=1e-6)).item() for k, v in before.items()}
    assert max(moved.values()) < 0.01, max(moved.items(), key=lambda kv: kv[1])  # float16's rounding, and one Adam step
    stale = (state[name + ".bias"].float() - before[name + ".bias"].float()).norm() / before[name + ".bias"].float().norm()
    assert stale > 0.05  # the base did move: without the rebase the student would be this far off
    assert log["gap_before"][1] < 0.01 and set(log["gap_after"]) == {1, 2, 4} and log["total_steps"] == 1
    info = json.loads((assets / "tiny-flux-fast" / "illustrated_sd.json").read_text())
    assert info["bases_sha256"]["transformer"] == weights_sha256(assets / "tiny-flux")
    assert json.loads((assets / "tiny-flux-fast" / "train_log.json").read_text())["rebased"][-1]["from"] == str(old)


def test_a_start_for_reflow_must_correct_this_teachers_weights(tmp_path):
    """--init: a correction fits the teacher it was distilled from, or, once moved, the weights it was moved onto."""
    from safetensors.torch import save_file

    from illustrated_sd.models.loading import weights_sha256
    from illustrated_sd.train.distill import corrects_weights_of

    (tmp_path / "teacher" / "transformer").mkdir(parents=True)
    save_file({"w": torch.zeros(3)}, tmp_path / "teacher" / "transformer" / "diffusion_pytorch_model.safetensors")
    this, other = weights_sha256(tmp_path / "teacher"), "0" * 64
    (tmp_path / "fast").mkdir()
    for meta, fits in (({"teacher_sha256": this}, True), ({"teacher_sha256": other}, False),
                       ({"teacher_sha256": other, "bases_sha256": {"transformer": this}}, True),  # moved onto this teacher
                       ({"teacher_sha256": this, "bases_sha256": {"transformer": other}}, False), ({}, True)):
        (tmp_path / "fast" / "illustrated_sd.json").write_text(json.dumps(meta))
        assert corrects_weights_of(tmp_path / "fast", tmp_path / "teacher") is fits, meta
