#!/usr/bin/env bash
# The attn figure: every cell of ae/attn/cells.sh through the kit's runner.
# Usage: ae/attn/run.sh [results_dir] [runner options]   (see ae/run_figure.sh)
exec "$(dirname "${BASH_SOURCE[0]}")/../run_figure.sh" attn "$@"
