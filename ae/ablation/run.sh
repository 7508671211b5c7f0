#!/usr/bin/env bash
# The ablation figure: every cell of ae/ablation/cells.sh through the kit's runner.
# Usage: ae/ablation/run.sh [results_dir] [runner options]   (see ae/run_figure.sh)
exec "$(dirname "${BASH_SOURCE[0]}")/../run_figure.sh" ablation "$@"
