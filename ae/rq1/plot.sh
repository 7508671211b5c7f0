#!/usr/bin/env bash
# rq1 figure: [log_dir]: the figure from backup_logs/rq1 (or log_dir) into figures/rq1/
exec "$(dirname "${BASH_SOURCE[0]}")/../characterize/figure.sh" plot rq1 "$@"
