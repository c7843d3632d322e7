# The paper's headline run: LLaMA-2-7B fine-tuned on AlpacaDataShort (prompt-inverted AlpacaDataCleaned, R_g ~ 0.08)
# with prompt loss weight 0.1, on the Stanford Alpaca recipe.
#   python data/prepare.py --dataset alpaca_cleaned_short --tokenizer $MODEL/tokenizer.model   # optional: train.py prepares too
#   python train.py configs/short_plw01.py --init_from=$MODEL                                      # one GPU
#   torchrun --standalone --nproc_per_node=4 train.py configs/short_plw01.py --init_from=$MODEL    # four GPUs
# global_batch_size 128 on any number of GPUs: the accumulation is 128 / (batch_size x GPUs), 32 on one GPU, 8 on four,
# 4 on eight (the paper: 4 GPUs x 4 rows x 8 accumulation).
init_from = "models/Llama-2-7b-hf"   # HF layout: config.json, model*.safetensors, tokenizer.model
dataset = "alpaca_cleaned_short"
out_dir = "out/short_plw0.1"
prompt_loss_weight = 0.1

max_seq_len = 512
batch_size = 4
global_batch_size = 128
pack = True              # the global batch packed into rows of <= 4096 tokens, one per micro-step: no padding, fewer
tokens_per_micro_batch = 4096  # and larger matmuls, the same update (docs/benchmarks.md: the plan)
epochs = 3.0
learning_rate = 2e-5
min_lr = 0.0
decay_lr = True          # cosine
warmup_ratio = 0.03
weight_decay = 0.0
grad_clip = 1.0
dtype = "bfloat16"
compile = True
parallel = "fsdp"        # under torchrun: shard weights, gradients and AdamW state (the paper used FSDP)
checkpoint_interval = 100
log_interval = 1
