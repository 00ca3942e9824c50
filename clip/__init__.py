"""EVA-CLIP: the EVA-initialised CLIP and its data pipeline (issue 11).

Kept import-light on purpose: ``import clip.curation`` must not pull in torch, so the curation
tools run on CPU-only data-processing workers.
"""
