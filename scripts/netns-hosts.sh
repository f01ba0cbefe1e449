#!/usr/bin/env bash
# Two "hosts" on one Linux machine: network namespaces NAME-a and NAME-b joined
# by a veth pair (veth0 in each), with loopback up in both. Needs root and
# iproute2. Commands then run on a host with `ip netns exec NAME-a CMD`.
#
#   scripts/netns-hosts.sh up NAME [ADDR_A ADDR_B]   default 10.213.0.1 and 10.213.0.2 (/24)
#   scripts/netns-hosts.sh down NAME                 deletes both namespaces (and so the pair)
#   scripts/netns-hosts.sh prune BASE                deletes BASE-<pid>-a/-b whose process <pid> is gone
#
# The addresses exist only inside the namespaces, so several pairs may use the
# same ones at once; the host's own interfaces and routes are not touched.
set -euo pipefail

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

name_ok() { [[ "$1" =~ ^[A-Za-z0-9_.-]{1,40}$ ]] || { echo "netns-hosts: bad name '$1'" >&2; exit 2; }; }

cmd=${1:-}
case "$cmd" in
  up)
    [ $# -eq 2 ] || [ $# -eq 4 ] || usage
    name=$2
    name_ok "$name"
    addr_a=${3:-10.213.0.1}
    addr_b=${4:-10.213.0.2}
    made=()
    # On failure, only what this call made is removed.
    trap 'for ns in "${made[@]}"; do ip netns del "$ns" 2>/dev/null || true; done' ERR
    ip netns add "$name-a"
    made+=("$name-a")
    ip netns add "$name-b"
    made+=("$name-b")
    # Both ends are made inside their namespaces: no interface appears on the host itself.
    ip link add veth0 netns "$name-a" type veth peer name veth0 netns "$name-b"
    ip -n "$name-a" addr add "$addr_a/24" dev veth0
    ip -n "$name-b" addr add "$addr_b/24" dev veth0
    for ns in "$name-a" "$name-b"; do
      ip -n "$ns" link set lo up
      ip -n "$ns" link set veth0 up
    done
    echo "$name-a $addr_a"
    echo "$name-b $addr_b"
    ;;
  down)
    [ $# -eq 2 ] || usage
    name_ok "$2"
    ip netns del "$2-a" 2>/dev/null || true
    ip netns del "$2-b" 2>/dev/null || true
    ;;
  prune)
    [ $# -eq 2 ] || usage
    name_ok "$2"
    for ns in $(ip netns list | awk '{print $1}'); do
      if [[ "$ns" =~ ^"$2"-([0-9]+)-[ab]$ ]] && ! kill -0 "${BASH_REMATCH[1]}" 2>/dev/null; then
        ip netns del "$ns" || true
      fi
    done
    ;;
  *)
    usage
    ;;
esac
