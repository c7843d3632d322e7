# The PLW experiment at CPU size, a few minutes: stories260K fine-tuned on prompt-inverted Alpaca records
# (data/samples/alpaca_2k_short.json, R_g << 1) at five PLWs x two seeds, plus dropout at PLW 0 and 1, then evaluated.
#   python data/fetch.py --only arc_easy,piqa     # its evaluation data, once (or NANOPLW_DATA=../shared/data/eval)
#   python sweep.py configs/tiny_sweep.py
init_from = "tests/fixtures/stories260K"
dataset = "data/samples/alpaca_2k_short.json"
out_dir = "out/tiny"
max_seq_len = 512
batch_size = 8
global_batch_size = 16        # 8 rows x 2 accumulation on one process
max_iters = 20
learning_rate = 1e-3
warmup_ratio = 0.05
device = "cpu"
dtype = "float32"
compile = False
log_interval = 1

# sweep.py settings (train.py ignores sweep_* names)
sweep_plw = "0,0.01,0.1,0.5,1"
sweep_seeds = "1,2"
sweep_regularizers = "dropout=0.1"
sweep_tasks = "arc_easy,piqa"
sweep_mc_limit = 40
sweep_mem_n = 48
sweep_mem_max_new_tokens = 32
