#!/usr/bin/env bash
# rq1 figure: <cell_id> [results_dir]: runs exactly that cell
exec "$(dirname "${BASH_SOURCE[0]}")/../characterize/figure.sh" run_single rq1 "$@"
