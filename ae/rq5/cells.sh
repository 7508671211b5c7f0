#!/usr/bin/env bash
# rq5 figure: prints the cell ids, one per line
exec "$(dirname "${BASH_SOURCE[0]}")/../characterize/figure.sh" cells rq5 "$@"
