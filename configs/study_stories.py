# The small-scale PLW study in the README: stories260K (a real pre-trained 260K-parameter LLaMA) fine-tuned on
# prompt-inverted Alpaca records (short completions, R_g 0.14) for 3 epochs at each PLW of the paper's grid.
#   python sweep.py configs/study_stories.py        # about 35 minutes on 2 CPU cores
init_from = "tests/fixtures/stories260K"
dataset = "data/samples/alpaca_2k_short.json"
out_dir = "out/study"
max_seq_len = 512
batch_size = 8
gradient_accumulation_steps = 2
epochs = 3.0
learning_rate = 1e-3      # the paper's 2e-5 is for 7B; a 260K-parameter model needs larger steps
warmup_ratio = 0.03
weight_decay = 0.0
grad_clip = 1.0
device = "cpu"
dtype = "float32"
compile = False
log_interval = 1          # the loss RSD needs every step

sweep_tasks = "arc_easy,winogrande,hellaswag"  # piqa: solutions up to 624 tokens of this 512-piece tokenizer
sweep_mc_limit = 500
sweep_mem_n = 400
sweep_mem_max_new_tokens = 64
sweep_eval_data = "../shared/data/eval/hf"
