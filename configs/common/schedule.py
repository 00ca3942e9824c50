"""Learning-rate multipliers (fvcore ParamSchedulers over training progress in [0, 1))."""
from eva_core.config import LazyCall as L
from eva_core.optim.schedulers import cosine_with_warmup, step_with_warmup

# cosine to 0 after a linear warmup over the first 5% of training
cosine = L(cosine_with_warmup)(warmup_fraction=0.05, warmup_factor=1e-3, min_ratio=0.0)

# detectron2 step schedule: x0.1 at each milestone (iterations), e.g. COCO fine-tuning
step = L(step_with_warmup)(max_iter="${train.max_iter}", steps=[], gamma=0.1,
                           warmup_iters=250, warmup_factor=1e-3)
