# Sourced by ae/<figure>/run_single.sh with "<figure> <cell_id> [results_dir]": checks
# that the cell is one of ae/<figure>/cells.sh (usage error, exit 2, otherwise), sets
# $cell and $out (absolute; default results/<today>/<figure>), moves to the repository
# root and puts src/ on PYTHONPATH. Paths the caller passes in other variables must be
# made absolute before sourcing.
fig=$1
shift
if (( $# < 1 )); then
  echo "usage: ae/$fig/run_single.sh <cell_id> [results_dir]   (cells: ae/$fig/cells.sh)" >&2
  exit 2
fi
cell=$1 out=${2:-}
[[ -n $out && $out != /* ]] && out="$PWD/$out"  # relative to the caller's directory
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${out:-results/$(date +%F)/$fig}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! bash "ae/$fig/cells.sh" | grep -xF -- "$cell" >/dev/null; then  # not -q: an early exit would SIGPIPE cells.sh
  echo "run_single.sh: $cell is not a cell of this figure (see ae/$fig/cells.sh)" >&2
  exit 2
fi

# patch_of <cells.txt> <model> <resolution>: the patch of that line of a cells.txt file.
patch_of() {
  awk -v m="$2" -v r="$3" '{ sub(/#.*/, "") } $1 == m { for (i = 3; i <= NF; i++) if ($i == r) print $2 }' "$1"
}
