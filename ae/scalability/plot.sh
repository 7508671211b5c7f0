#!/usr/bin/env bash
# scalability figure: [log_dir]: the figure from backup_logs/scalability (or log_dir) into figures/scalability/
exec "$(dirname "${BASH_SOURCE[0]}")/../characterize/figure.sh" plot scalability "$@"
