"""One command for the tools: `nmtlab <tool> [args]` (or `python -m nmtlab <tool> [args]`).

Each tool is also a module of its own (`python -m nmtlab.report`); this only
dispatches to the module's main() with the remaining arguments.
"""
from __future__ import annotations

import importlib
import sys

# tool name -> (module, one line for the help)
TOOLS = {
    "report": ("nmtlab.report.__main__",
               "hypotheses pooled over training seeds against the baseline, with significance"),
    "hypotheses": ("nmtlab.hypotheses.__main__",
                   "the hypothesis catalogue: list, queue, start, wait, sweep in rounds"),
    "bench": ("nmtlab.bench", "training and decoding speed against plain baselines"),
    "loss-check": ("nmtlab.loss_check", "SmoothCE against torch's CrossEntropyLoss, with a figure"),
    "translate": ("nmtlab.translate", "translate your own sentences (stdin or a file) with a trained model"),
    "init-from": ("nmtlab.init_from", "put a trained model in init/ for train.init_from"),
    "export-ct2": ("nmtlab.ct2", "convert a trained model to CTranslate2 (float32 or int8)"),
    "show": ("nmtlab.show", "dvc exp show with the columns to compare (changed params, BLEU, cost)"),
}


def usage() -> str:
    width = max(map(len, TOOLS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in TOOLS.items())
    return f"usage: nmtlab TOOL [ARGS]   (nmtlab TOOL --help for its own options)\n\ntools:\n{rows}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in TOOLS:
        print(f"error: unknown tool {name!r}\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(TOOLS[name][0])
    sys.argv = [f"nmtlab {name}", *rest]
    module.main()


if __name__ == "__main__":
    main()
