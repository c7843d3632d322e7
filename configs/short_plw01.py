# The paper's headline run: LLaMA-2-7B fine-tuned on AlpacaDataShort (prompt-inverted AlpacaDataCleaned, R_g ~ 0.08)
# with prompt loss weight 0.1, on the Stanford Alpaca recipe.
#   python data/prepare.py --dataset alpaca_cleaned_short --tokenizer $MODEL/tokenizer.model   # optional: train.py prepares too
#   torchrun --standalone --nproc_per_node=4 train.py configs/short_plw01.py --init_from=$MODEL
# global batch 128 = batch_size x gradient_accumulation_steps x GPUs: 4 x 32 on one GPU, 4 x 8 on four, 4 x 4 on eight.
init_from = "models/Llama-2-7b-hf"   # HF layout: config.json, model*.safetensors, tokenizer.model
dataset = "alpaca_cleaned_short"
out_dir = "out/short_plw0.1"
prompt_loss_weight = 0.1

max_seq_len = 512
batch_size = 4
gradient_accumulation_steps = 32
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
