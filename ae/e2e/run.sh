#!/usr/bin/env bash
# The e2e figure: every cell of ae/e2e/cells.sh through the kit's runner.
# Usage: ae/e2e/run.sh [results_dir] [runner options]   (see ae/run_figure.sh)
exec "$(dirname "${BASH_SOURCE[0]}")/../run_figure.sh" e2e "$@"
