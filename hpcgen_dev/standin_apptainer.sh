#!/bin/bash
# A stand-in for `apptainer exec` on the throwaway cluster: Apptainer/Singularity is not packaged for Debian 12,
# PyPI or npm, so this runs the command in a bubblewrap (bwrap) mount namespace instead.
#
#   standin_apptainer.sh exec [--nv] [--bind SRC[:DST[:ro|rw]],...] [--pwd DIR] IMAGE COMMAND...
#
# The "image" is a text file naming the host paths that make up the container's filesystem (bound read-only);
# like Apptainer it also binds $HOME, /proc, /sys and /dev, but /tmp is private and nothing else is visible,
# so a path hpcgen forgot to mount fails the task. Each call is appended to $HPCGEN_STANDIN_LOG.
set -euo pipefail
die() { echo "stand-in apptainer: $*" >&2; exit 2; }
[ "${1:-}" = exec ] || die "only 'exec' is supported"
shift
binds=()
workdir=/
while [ $# -gt 0 ]; do
  case "$1" in
    --nv) shift ;;
    --bind)
      [ $# -ge 2 ] || die "--bind needs a value"
      IFS=, read -ra entries <<< "$2"
      for entry in "${entries[@]}"; do
        IFS=: read -r src dst mode <<< "$entry"
        dst=${dst:-$src}
        [ -e "$src" ] || die "bind source $src does not exist on $(hostname)"
        if [ "${mode:-rw}" = ro ]; then binds+=(--ro-bind "$src" "$dst"); else binds+=(--bind "$src" "$dst"); fi
      done
      shift 2 ;;
    --pwd) [ $# -ge 2 ] || die "--pwd needs a value"; workdir=$2; shift 2 ;;
    -*) die "unsupported option $1" ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || die "usage: exec [options] IMAGE COMMAND..."
image=$1
shift
[ -f "$image" ] || die "image $image does not exist"
root=()
while read -r path; do  # a symlink (merged /usr: /bin -> usr/bin) stays a symlink
  if [ -L "$path" ]; then root+=(--symlink "$(readlink "$path")" "$path"); elif [ -n "$path" ]; then root+=(--ro-bind "$path" "$path"); fi
done < "$image"
echo "${SLURMD_NODENAME:-$(hostname)} image=$image binds=${#binds[@]} pwd=$workdir cmd=$*" >> "${HPCGEN_STANDIN_LOG:-/dev/null}"
exec bwrap --die-with-parent "${root[@]}" --bind "$HOME" "$HOME" --proc /proc --ro-bind /sys /sys --dev /dev \
  --tmpfs /tmp "${binds[@]}" --chdir "$workdir" "$@"
