#!/usr/bin/env bash
# The reorder figure: every cell of ae/reorder/cells.sh through the kit's runner.
# Usage: ae/reorder/run.sh [results_dir] [runner options]   (see ae/run_figure.sh)
exec "$(dirname "${BASH_SOURCE[0]}")/../run_figure.sh" reorder "$@"
