# alternative regularizer (stack after a base config): attention and residual dropout, PLW 0
prompt_loss_weight = 0.0
dropout = 0.1
out_dir = "out/short_plw0_dropout0.1"
