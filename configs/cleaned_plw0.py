# Override file, stacked after the base recipe: AlpacaDataCleaned (gururise/AlpacaDataCleaned, fetched by URL; or
# --dataset=/path/to/alpaca_data_cleaned.json), PLW 0.
#   torchrun --standalone --nproc_per_node=4 train.py configs/short_plw01.py configs/cleaned_plw0.py
dataset = "alpaca_cleaned"
out_dir = "out/cleaned_plw0"
prompt_loss_weight = 0.0
