# The paper's alternative regularizers, as override files stacked after a base config, with PLW 0:
#   python train.py configs/short_plw01.py configs/reg_weight_decay.py
prompt_loss_weight = 0.0
weight_decay = 0.1
out_dir = "out/short_plw0_wd0.1"
