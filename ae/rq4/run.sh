#!/usr/bin/env bash
# rq4 figure: [results_dir] [runner options]: every cell through the kit's runner
exec "$(dirname "${BASH_SOURCE[0]}")/../characterize/figure.sh" run rq4 "$@"
