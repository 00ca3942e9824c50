#!/usr/bin/env python
"""Score a COCO-format results json against an LVIS ground-truth json with the lvis API
(AP, AP50, AP75, APs, APm, APl, APr, APc, APf for boxes and masks), optionally with the fixed-AP
protocol of the LVIS challenge.

Examples::

    # standard LVIS v1 evaluation: at most 300 detections per image
    python tools/lvis_eval.py datasets/lvis/lvis_v1_val.json output/lvis_instances_results.json \\
        --task bbox segm --output-dir output/lvis_eval

    # fixed AP (Dave et al. 2021): the top 10,000 detections of each category over the whole
    # dataset, no per-image cap
    python tools/lvis_eval.py datasets/lvis/lvis_v1_val.json output/lvis_instances_results.json \\
        --task segm --fixed-ap

Prints detectron2's copy-paste lines and a markdown table; with ``--output-dir`` saves
``lvis_eval.json`` (``{task: {metric: AP in percent}}``) and ``lvis_eval.md`` (``lvis_eval_fixed.*``
with ``--fixed-ap``). Numbers are the lvis API's own (``LVISEval``), in percent. See
docs/recipes/detection.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from eva_core.evaluation import format_results_table
from eva_core.evaluation.coco import metrics_markdown
from eva_core.evaluation.lvis import FIXED_AP_DETS_PER_CLASS, evaluate_lvis_file


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("gt_json", help="LVIS v1 ground-truth json (lvis_v1_val.json)")
    p.add_argument("results_json", help="detections in the COCO results format")
    p.add_argument("--task", nargs="+", default=["bbox"], choices=["bbox", "segm"])
    p.add_argument("--max-dets-per-image", type=int, default=300,
                   help="per-image cap of standard LVIS evaluation")
    p.add_argument("--fixed-ap", action="store_true",
                   help=f"fixed-AP protocol: top --dets-per-class ({FIXED_AP_DETS_PER_CLASS}) detections "
                        "per category over the dataset, no per-image cap")
    p.add_argument("--dets-per-class", type=int, default=FIXED_AP_DETS_PER_CLASS)
    p.add_argument("--output-dir", default=None, help="write lvis_eval.json and lvis_eval.md here")
    args = p.parse_args(argv)
    results = evaluate_lvis_file(args.gt_json, args.results_json, args.task,
                                 max_dets_per_image=args.max_dets_per_image,
                                 max_dets_per_class=args.dets_per_class if args.fixed_ap else None)
    protocol = (f"fixed AP, {args.dets_per_class} detections per category" if args.fixed_ap
                else f"{args.max_dets_per_image} detections per image")
    table = metrics_markdown(results, title=f"LVIS AP (%) of {args.results_json} ({protocol})")
    print(format_results_table(results))
    print(table)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        stem = "lvis_eval_fixed" if args.fixed_ap else "lvis_eval"
        with open(os.path.join(args.output_dir, f"{stem}.json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(args.output_dir, f"{stem}.md"), "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
