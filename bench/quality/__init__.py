"""The quality benchmark of issue 6: data (data.py), the small model (model.py), pretraining
(pretrain.py) and the SWAA grid (evaluate.py; `swaa bench quality`). See docs/quality.md."""
