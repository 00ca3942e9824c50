"""detectron2 step schedule with linear warmup (EVA's detection fine-tuning: lr x0.1 near the end)."""
from eva_core.config import LazyCall as L
from eva_core.optim.schedulers import step_with_warmup

step = L(step_with_warmup)(max_iter="${train.max_iter}", steps=[], gamma=0.1, warmup_iters=250,
                           warmup_factor=1e-3)
