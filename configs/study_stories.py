# The small-scale PLW study in the README ("A small-scale study (CPU)"): stories260K (a real pre-trained 260K-parameter
# LLaMA) fine-tuned on prompt-inverted Alpaca records that fit its context with their whole completion, then measured
# on held-out records (fit, overfitting, the learned task), on text sampled from the base model (forgetting) and by
# the paper's mechanisms (loss RSD, weight distance, memorization). 6 PLWs x 5 seeds = 30 runs of 74 steps.
#   python data/fetch.py --only arc_easy             # its evaluation data, once (or NANOPLW_DATA=../shared/data/eval)
#   python sweep.py configs/study_stories.py          # one process: about 75 min on 2 shared CPU cores
# or, as it was run (31 min, 2026-11-30): two processes of one core each, half the PLW grid each, then collect
#   OMP_NUM_THREADS=1 python sweep.py configs/study_stories.py --plw=0,5e-4,0.01 &
#   OMP_NUM_THREADS=1 python sweep.py configs/study_stories.py --plw=0.05,0.25,1 &
#   wait; python sweep.py configs/study_stories.py    # every step is done: scores.jsonl + analysis/
# The data (committed, made once; eval/heldout.py's docstring):
#   python eval/heldout.py split --src data/samples/alpaca_2k_short.json --tokenizer tests/fixtures/stories260K \
#       --max_seq_len 512 --n_heldout 200 --n_train 300 --seed 0 --out docs/study/data
#   python eval/heldout.py base_samples --model tests/fixtures/stories260K --n 64 --tokens 128 --seed 0 \
#       --output docs/study/data/base_samples.json
# The held-out split is fixed (split --seed 0); a run's seed changes only the data order (dropout is 0) and which 64
# training prompts memorization BLEU scores (the same at every PLW for that seed).
init_from = "tests/fixtures/stories260K"
dataset = "docs/study/data/train.json"   # 300 records, every one whole within max_seq_len
out_dir = "out/study"
max_seq_len = 512
batch_size = 8
gradient_accumulation_steps = 1  # global batch 8: 37 steps per epoch
epochs = 2.0              # 74 steps: sized to fit ~40 min for 18 runs on 2 shared cores
learning_rate = 1e-3      # the paper's 2e-5 is for 7B; a 260K-parameter model needs larger steps
warmup_ratio = 0.03
weight_decay = 0.0
dropout = 0.0
grad_clip = 1.0
device = "cpu"
dtype = "float32"
compile = False
log_interval = 1          # the loss RSD needs every step

sweep_plw = "0,5e-4,0.01,0.05,0.25,1"
sweep_seeds = "1,2,3,4,5"
sweep_tasks = "arc_easy"  # at chance at this size: kept (200 documents) to show it, and for the analysis' aggregate
sweep_mc_limit = 200
sweep_mem_n = 64          # memorization BLEU on 64 training prompts
sweep_mem_max_new_tokens = 64
sweep_heldout = "docs/study/data/heldout.json"
sweep_forget = "docs/study/data/base_samples.json"
sweep_heldout_max_new_tokens = 64
