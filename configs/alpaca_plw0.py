# Override file, stacked after the base recipe: the original Stanford Alpaca data (R_g ~ 3.27, long completions),
# where PLW hardly matters. PLW 0 is Stanford's masking.
#   torchrun --standalone --nproc_per_node=4 train.py configs/short_plw01.py configs/alpaca_plw0.py
dataset = "alpaca"
out_dir = "out/alpaca_plw0"
prompt_loss_weight = 0.0
