# CPU quick start, about a minute on 2 cores (61 s measured under load, 2026-11-30): the tiny pre-trained stories260K LLaMA (in tests/fixtures) fine-tuned on the first
# 2,000 Stanford Alpaca records (data/samples) with PLW 0.1. Same code path as the 7B runs, float32 on the CPU.
init_from = "tests/fixtures/stories260K"
dataset = "data/samples/alpaca_2k.json"
out_dir = "out/tiny_stories"
prompt_loss_weight = 0.1
max_seq_len = 512
batch_size = 8
global_batch_size = 16        # 8 rows x 2 accumulation on one process
epochs = 1.0
learning_rate = 1e-3     # a 260K-parameter model needs a far larger step than 7B's 2e-5 to move in a minute
warmup_ratio = 0.03
weight_decay = 0.0
grad_clip = 1.0
device = "cpu"
dtype = "float32"
compile = False
log_interval = 1
