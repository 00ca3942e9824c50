"""Stage 2 on Kinetics-700: 2 epoch(s) at 16 frames, lr 1e-6 constant, layer decay 0.95 (``stage2_base.py``).

Paper Table 16; 534_063 training clips. Expects ``datasets/kinetics/k700_{train,val}.txt`` and
``k722_to_k700.json`` (``tools/make_kinetics722.py``), and the stage-1 result (``k722_stage1.py``)::

    python tools/lazyconfig_train_net.py --config-file video/configs/k700_stage2.py
"""
from .stage2_base import stage2

model, dataloader, optimizer, lr_multiplier, train = stage2("k700", num_classes=700, num_clips=534_063,
                                                            epochs=2)
