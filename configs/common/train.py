"""Engine settings shared by every recipe (detectron2 defaults; keys listed in docs/DESIGN.md).

Recipes import it with ``from ..common.train import train`` and change what they need.
"""

train = dict(
    output_dir="./output",
    init_checkpoint="",  # weights loaded before training (ignored when resuming)
    # least share of the model's tensors a checkpoint must fill, else the run stops naming the file
    # and the first missing keys: a number in [0, 1] (1.0: every tensor, 0: any overlap) or
    # "encoder" (every encoder tensor; a classifier head may be new). Each load logs one line.
    min_loaded=dict(
        init="encoder",  # train.init_checkpoint (fine-tuning: a new head is listed, not fatal)
        eval=1.0,  # --eval-only: evaluating a randomly initialised head or block would be wrong
    ),
    max_iter=90000,
    amp=dict(
        enabled=False,
        dtype="bfloat16",  # "float16" adds a dynamic loss scaler
        loss_scale=dict(  # fp16 only; the paper's recipe (DeepSpeed's dynamic loss scaling)
            init_scale=2.0**16,
            growth_interval=500,  # steps without overflow before the scale doubles
            hysteresis=2,  # the scale halves on the 2nd overflow (every overflow skips its step)
            min_scale=1.0,
        ),
    ),
    ddp=dict(  # arguments of torch DistributedDataParallel
        broadcast_buffers=False,
        find_unused_parameters=False,
    ),
    checkpointer=dict(
        period=5000,  # iterations between checkpoints
        max_to_keep=100,
        format="pth",  # "pth" (full training state) or "safetensors" (model weights only)
    ),
    eval_period=5000,  # 0 disables evaluation during training
    log_period=20,
    device=None,  # None: this process's local GPU if there is one, else CPU; or "cpu" / "cuda"
    seed=-1,  # negative: draw a random seed (logged)
    grad_accum_steps=1,
    clip_grad=None,  # max gradient norm, None to disable
    ema=dict(enabled=False, decay=0.9999),
    zero_stage=0,  # 1: shard optimizer state with torch ZeroRedundancyOptimizer
    deepspeed=None,  # a DeepSpeed config dict to train through DeepSpeed instead
    max_nonfinite_steps=10,  # stop after this many consecutive non-finite losses
    deterministic=False,
    cudnn_benchmark=False,  # cuDNN autotuning: faster for fixed input sizes, slower when they vary
    allow_pickle=False,  # let checkpoint loading unpickle any type (trusted files only; --allow-pickle)
    # seconds a collective waits for the other ranks; None: 300 on CPU (gloo), 1800 on GPU (NCCL)
    dist_timeout=None,
    heartbeat_timeout=60.0,  # warn naming a rank that finished no iteration for this many seconds; 0: off
)
