# alternative regularizer (stack after a base config): label smoothing inside the same per-token weighting, PLW 0
prompt_loss_weight = 0.0
label_smoothing = 0.1
out_dir = "out/short_plw0_ls0.1"
