"""`swaa bench quality`: the quality benchmark (bench/quality/evaluate.py; see its docstring).

    swaa bench quality --model runs/quality_model --window 512 --finetune
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality.evaluate import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
