"""What a training step optimises: the noise it adds, the timesteps it draws, the target it predicts
and how the loss is weighted — kohya sd-scripts' options, restated and tested one by one.

Two objective families sit side by side:
- DDPM (SD1.5, SDXL): x_t = √ᾱ·x0 + √(1−ᾱ)·ε at integer timesteps, target ε or v, optional zero terminal SNR;
  the modules below, composed by lorafw/trainers/step.py.
- Rectified flow (flow-matching DiTs: Anima, FLUX): x_t = (1−σ)·x0 + σ·ε with σ in [0, 1], target ε − x0;
  flow.py, whole (σ sampling uniform / sigmoid / shift / flux_shift / sigma-table with logit-normal or mode
  density, σ weightings, the Euler sampler's σ schedule and one step's loss `flow_loss`).

The DDPM modules (maxnorm.py serves both families):
- prediction.py: which target a checkpoint was trained on (read from the file) and what the config asks;
  no torch, so `lorafw check` and `lorafw plan` can use it.
- schedule.py: the DDPM noise schedule (zero-terminal-SNR rescale) and the SNR the loss weights read.
- noise.py, timesteps.py: noise offset (adaptive, random strength), multires noise, input perturbation,
  the timestep range.
- loss.py: l2 / l1 / huber / smooth_l1 with kohya's huber schedules; min-SNR, v-like and debiased weights.
- maxnorm.py: kohya's scale_weight_norms (max-norm regularisation of the adapters).
The trainers' step function (lorafw/trainers/step.py) calls the DDPM ones in kohya's order; flow.py reuses
loss.elementwise and noise.perturbed (input perturbation) from them.
"""
