import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler

from illustrated_sd.models.unet import SD_SCHEDULE
from illustrated_sd.loops.sampling import alpha_bars_for, classifier_free_guidance, is_sigma_space, pred_x0


def make(cls, prediction_type):
    return cls.from_config({**SD_SCHEDULE, "prediction_type": prediction_type})


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler])
def test_pred_x0_equals_the_schedulers_own_estimate(cls, prediction_type):
    scheduler = make(cls, prediction_type)
    scheduler.set_timesteps(10)
    alpha_bars = alpha_bars_for(scheduler, scheduler.timesteps)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=gen) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps[:4]):
        model_input = scheduler.scale_model_input(sample, t)
        output = torch.randn(1, 4, 8, 8, generator=gen)
        step = scheduler.step(output, t, sample, generator=gen)
        torch.testing.assert_close(pred_x0(model_input, output, alpha_bars[i], prediction_type), step.pred_original_sample, atol=1e-4, rtol=1e-4)
        sample = step.prev_sample


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_pred_x0_equals_dpm_solver_plus_plus_data_prediction(prediction_type):
    scheduler = make(DPMSolverMultistepScheduler, prediction_type)
    scheduler.set_timesteps(10)
    alpha_bars = alpha_bars_for(scheduler, scheduler.timesteps)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=gen)
    for i, t in enumerate(scheduler.timesteps[:3]):
        output = torch.randn(1, 4, 8, 8, generator=gen)
        scheduler._init_step_index(t) if scheduler.step_index is None else None
        x0 = scheduler.convert_model_output(output, sample=sample)  # DPM-Solver++ works with x0 directly
        torch.testing.assert_close(pred_x0(sample, output, alpha_bars[i], prediction_type), x0, atol=1e-4, rtol=1e-4)
        sample = scheduler.step(output, t, sample).prev_sample


def test_pred_x0_inverts_forward_noising():
    """x_t = √ᾱ x0 + √(1−ᾱ) ε, so predicting the true ε (or v) gives back x0 exactly."""
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    alpha_bar = torch.tensor(0.3)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    v = alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
    torch.testing.assert_close(pred_x0(x_t, eps, alpha_bar, "epsilon"), x0)
    torch.testing.assert_close(pred_x0(x_t, v, alpha_bar, "v_prediction"), x0)
    torch.testing.assert_close(pred_x0(x_t, x0, alpha_bar, "sample"), x0)
    with pytest.raises(ValueError, match="epsilon"):
        pred_x0(x_t, eps, alpha_bar, "flow")


def test_alpha_bars_follow_the_sd_schedule():
    ddim, pndm, euler = make(DDIMScheduler, "epsilon"), make(PNDMScheduler, "epsilon"), make(EulerDiscreteScheduler, "epsilon")
    for s in (ddim, pndm, euler):
        s.set_timesteps(20)
    assert not is_sigma_space(ddim) and is_sigma_space(euler)
    a = alpha_bars_for(ddim, ddim.timesteps)
    assert a.shape == (20,) and (a.diff() > 0).all()  # noisy first, cleaner every step
    assert alpha_bars_for(pndm, pndm.timesteps).shape == (len(pndm.timesteps),)  # PNDM visits one timestep twice
    torch.testing.assert_close(alpha_bars_for(euler, euler.timesteps)[0], ddim.alphas_cumprod[euler.timesteps[0].long()], atol=1e-4, rtol=1e-3)


def test_classifier_free_guidance_formula():
    u, c = torch.zeros(3), torch.ones(3)
    assert classifier_free_guidance(u, c, 1.0).tolist() == [1, 1, 1]
    assert classifier_free_guidance(u, c, 7.5).tolist() == [7.5, 7.5, 7.5]
    assert classifier_free_guidance(u, c, 0.0).tolist() == [0, 0, 0]
