"""Generate the EVA toy world: ``python tools/make_toy_world.py --out DIR --seed 0 --size small``."""
from eva_core.data.toy_world import main

if __name__ == "__main__":
    main()
