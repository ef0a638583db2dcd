"""What a training step optimises: the noise it adds, the timesteps it draws, the target it predicts
(ε or v) and how the loss is weighted — kohya sd-scripts' options, restated and tested one by one.

- prediction.py: which target a checkpoint was trained on (read from the file) and what the config asks;
  no torch, so `lorafw check` and `lorafw plan` can use it.
- schedule.py: the DDPM noise schedule (zero-terminal-SNR rescale) and the SNR the loss weights read.
- noise.py, timesteps.py: noise offset (adaptive, random strength), multires noise, input perturbation,
  the timestep range.
- loss.py: l2 / l1 / huber / smooth_l1 with kohya's huber schedules; min-SNR, v-like and debiased weights.
- maxnorm.py: kohya's scale_weight_norms (max-norm regularisation of the adapters).
The trainers' step function (lorafw/trainers/step.py) calls these in kohya's order.
"""
