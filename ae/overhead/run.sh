#!/usr/bin/env bash
# The overhead figure: every cell of ae/overhead/cells.sh through the kit's runner.
# Usage: ae/overhead/run.sh [results_dir] [runner options]   (see ae/run_figure.sh)
exec "$(dirname "${BASH_SOURCE[0]}")/../run_figure.sh" overhead "$@"
